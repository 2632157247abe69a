"""Publish asv's HTML site so that it renders without internet: its JavaScript and CSS from npm, not CDNs.

    python -m experiments.asv_site [--config asv.conf.json] [--vendor-dir .asv/vendor] [--no-publish]

asv's ``index.html`` loads jQuery, flot (and four of its plugins), flot-orderbars, stupidtable, blueimp-md5 and
Bootstrap from public CDNs, and sends the browser to ``error.html`` ("One or more external (JavaScript)
dependencies of airspeed velocity failed to load") when one fails, which is every time on a machine without
internet. This runs ``asv publish``, installs the same packages at the same versions from the npm registry
(``npm install --prefix VENDOR_DIR``, a git-ignored folder under ``.asv/``; npm checks each tarball against the
registry's sha512), copies the files the page needs with each package's licence into ``<html_dir>/vendor/``,
and points every CDN reference of the published HTML at them. The ``integrity`` hashes asv gives belong to the
CDNs' builds (cdnjs minifies flot itself), so they are dropped with the ``crossorigin`` attributes: the files
are served from the site's own origin. Nothing downloaded is ever committed.

Every package is MIT-licensed. npm has no ``stupid-table-plugin`` 1.0.1 (cdnjs's ``stupidtable/1.0.1``), so its
1.1.3 is used: the same ``$.fn.stupidtable``/``stupidsort`` API that asv calls. A CDN reference that is not in
:data:`CDN_FILES` (a newer asv) stops the publication with its URL, rather than leaving a page that fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from experiments.harness.storage import atomic_write_text

#: npm package spec -> the licence files copied next to its code.
PACKAGES = {
    "jquery@3.3.1": ["LICENSE.txt"],
    "flot@0.8.3": ["LICENSE.txt"],
    "flot-orderbars@1.0.0": ["package.json"],  # no licence file; package.json's "license" is MIT
    "stupid-table-plugin@1.1.3": ["LICENSE"],
    "blueimp-md5@2.19.0": ["LICENSE.txt"],
    "bootstrap@3.1.1": ["LICENSE"],
}

#: CDN URL of asv's index.html -> (npm package spec, file in the package). Bootstrap's CSS finds its fonts at
#: ``../fonts/`` (copied with it, see :data:`EXTRA_FILES`).
CDN_FILES = {
    "https://code.jquery.com/jquery-3.3.1.min.js": ("jquery@3.3.1", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.min.js": ("flot@0.8.3", "jquery.flot.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.time.min.js": ("flot@0.8.3", "jquery.flot.time.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.selection.min.js": (
        "flot@0.8.3",
        "jquery.flot.selection.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/flot/0.8.3/jquery.flot.categories.min.js": (
        "flot@0.8.3",
        "jquery.flot.categories.js",
    ),
    "https://cdn.jsdelivr.net/npm/flot-orderbars@1.0.0/js/jquery.flot.orderBars.js": (
        "flot-orderbars@1.0.0",
        "js/jquery.flot.orderBars.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/stupidtable/1.0.1/stupidtable.min.js": (
        "stupid-table-plugin@1.1.3",
        "stupidtable.min.js",
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/blueimp-md5/2.19.0/js/md5.min.js": ("blueimp-md5@2.19.0", "js/md5.min.js"),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/js/bootstrap.min.js": (
        "bootstrap@3.1.1",
        "dist/js/bootstrap.min.js",
    ),
    "https://cdn.jsdelivr.net/npm/bootstrap@3.1.1/dist/css/bootstrap.min.css": (
        "bootstrap@3.1.1",
        "dist/css/bootstrap.min.css",
    ),
}

#: Files a vendored file loads by relative path: package spec -> folders copied whole.
EXTRA_FILES = {"bootstrap@3.1.1": ["dist/fonts"]}

#: A <script> or <link> tag with an absolute http(s) ``src``/``href``: what a browser fetches from elsewhere.
EXTERNAL_TAG = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)=\"(https?://[^\"]+)\"[^>]*>", re.IGNORECASE)
#: Attributes that only make sense for a cross-origin copy (a CDN build's hash, CORS, referrer policy).
CDN_ATTRIBUTES = re.compile(r"\s+(?:integrity|crossorigin|referrerpolicy)=\"[^\"]*\"", re.IGNORECASE)


def package_name(spec: str) -> str:
    """``"bootstrap@3.1.1"`` -> ``"bootstrap"``."""
    return spec.rsplit("@", 1)[0]


def local_path(spec: str, file: str) -> str:
    """Where a vendored file lives relative to the site: ``vendor/<package>/<file>``."""
    return f"vendor/{package_name(spec)}/{file}"


def rewrite_html(text: str) -> str:
    """``text`` with every CDN ``<script>``/``<link>`` pointing at its vendored copy (:data:`CDN_FILES`) and
    without the CDN-only attributes. ``ValueError`` naming the URL for an external script or stylesheet that
    is not vendored (a page that would still need the internet)."""

    def local(match):
        url = match.group(1)
        if url not in CDN_FILES:
            # Links to a web page (asv's own home page in the navigation bar) are <a> tags, never matched here.
            raise ValueError(
                f"the published HTML loads {url!r}, which experiments.asv_site does not vendor; add it to CDN_FILES"
            )
        tag = match.group(0).replace(url, local_path(*CDN_FILES[url]))
        return CDN_ATTRIBUTES.sub("", tag)

    return EXTERNAL_TAG.sub(local, text)


def install_packages(vendor_dir: Path) -> Path:
    """``npm install`` the pinned :data:`PACKAGES` under ``vendor_dir``; the node_modules folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("experiments.asv_site needs npm (Debian: apt-get install npm) to vendor asv's JavaScript")
    vendor_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            npm,
            "install",
            "--prefix",
            str(vendor_dir),
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            *PACKAGES,
        ],
        check=True,
    )
    return vendor_dir / "node_modules"


def vendor_into(html_dir: Path, node_modules: Path) -> list[str]:
    """Copy the files the site needs (and each package's licence) from ``node_modules`` into
    ``html_dir/vendor``; the copied paths relative to ``html_dir``."""
    wanted = [(spec, file) for spec, file in CDN_FILES.values()]
    wanted += [(spec, file) for spec, files in PACKAGES.items() for file in files]
    copied = []
    for spec, file in dict.fromkeys(wanted):
        source = node_modules / package_name(spec) / file
        target = html_dir / local_path(spec, file)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        copied.append(local_path(spec, file))
    for spec, folders in EXTRA_FILES.items():
        for folder in folders:
            shutil.copytree(
                node_modules / package_name(spec) / folder, html_dir / local_path(spec, folder), dirs_exist_ok=True
            )
            copied.append(local_path(spec, folder) + "/")
    return copied


def localize_site(html_dir: Path) -> list[Path]:
    """Rewrite every HTML page of ``html_dir`` (atomically) to load the vendored copies; the pages changed."""
    changed = []
    for page in sorted(html_dir.glob("*.html")):
        text = page.read_text(encoding="utf-8")
        rewritten = rewrite_html(text)
        if rewritten != text:
            atomic_write_text(page, rewritten)
            changed.append(page)
    return changed


def html_dir_of(config: Path) -> Path:
    """The ``html_dir`` of an asv configuration file, relative to the file's folder as asv reads it."""
    from asv.config import Config

    html_dir = Path(Config.load(str(config)).html_dir)
    return html_dir if html_dir.is_absolute() else config.resolve().parent / html_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.asv_site", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("asv.conf.json"), help="asv's configuration")
    parser.add_argument(
        "--vendor-dir",
        type=Path,
        default=Path(".asv/vendor"),
        help="where npm installs the packages (default .asv/vendor, git-ignored)",
    )
    parser.add_argument(
        "--no-publish", action="store_true", help="vendor into the site asv published last, without running asv publish"
    )
    args = parser.parse_args(argv)
    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file (run from the repository root)")
    if not args.no_publish:
        subprocess.run([sys.executable, "-m", "asv", "publish", "--config", str(args.config)], check=True)
    html_dir = html_dir_of(args.config)
    if not (html_dir / "index.html").is_file():
        parser.error(f"{html_dir} holds no published site (index.html); run without --no-publish")
    copied = vendor_into(html_dir, install_packages(args.vendor_dir))
    pages = localize_site(html_dir)
    print(
        f"asv_site: {len(copied)} vendored files under {html_dir / 'vendor'}; "
        f"{', '.join(p.name for p in pages)} now load them (no CDN)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
