"""experiments.asv_site: every CDN reference of asv's pages is vendored, and a published site loads nothing from
elsewhere (no npm here: a fake node_modules stands in for the registry)."""

import re
from pathlib import Path

import pytest

asv = pytest.importorskip("asv")

from experiments import asv_site  # noqa: E402

ASV_WWW = Path(asv.__file__).parent / "www"


def external_references(html: str) -> set[str]:
    return set(asv_site.EXTERNAL_TAG.findall(html))


def test_every_cdn_reference_of_the_installed_asv_is_vendored():
    """A newer asv with another CDN file fails here (and in asv_site), not in a user's browser."""
    found = set()
    for page in ASV_WWW.glob("*.html"):
        found |= external_references(page.read_text(encoding="utf-8"))
    assert found == set(asv_site.CDN_FILES)
    assert {spec for spec, _ in asv_site.CDN_FILES.values()} <= set(asv_site.PACKAGES)


def test_rewritten_index_loads_only_local_files():
    original = (ASV_WWW / "index.html").read_text(encoding="utf-8")
    rewritten = asv_site.rewrite_html(original)
    assert external_references(rewritten) == set()
    assert "integrity=" not in rewritten and "crossorigin=" not in rewritten
    for spec, file in asv_site.CDN_FILES.values():
        assert f'"{asv_site.local_path(spec, file)}"' in rewritten
    # asv's own scripts, its fallback to error.html and the link to asv's home page are left alone
    assert 'src="asv.js"' in rewritten and 'onerror="js_load_failure()"' in rewritten
    assert 'href="https://github.com/airspeed-velocity/asv/"' in rewritten
    assert asv_site.rewrite_html(rewritten) == rewritten


def test_an_unknown_cdn_is_refused_with_its_url():
    page = '<script src="https://cdn.example.org/lib.js" integrity="sha256-x"></script>'
    with pytest.raises(ValueError, match=re.escape("https://cdn.example.org/lib.js")):
        asv_site.rewrite_html(page)


def fake_node_modules(root: Path) -> Path:
    """Every file asv_site copies, with its package and path as content."""
    modules = root / "node_modules"
    wanted = [
        *asv_site.CDN_FILES.values(),
        *((s, f) for s, files in asv_site.PACKAGES.items() for f in files),
        *((s, f"{folder}/font.woff") for s, folders in asv_site.EXTRA_FILES.items() for folder in folders),
    ]
    for spec, file in wanted:
        path = modules / asv_site.package_name(spec) / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{spec}/{file}")
    return modules


def test_vendor_and_localize_a_published_site(tmp_path):
    site = tmp_path / "html"
    site.mkdir()
    for page in ASV_WWW.glob("*.html"):
        (site / page.name).write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    copied = asv_site.vendor_into(site, fake_node_modules(tmp_path))
    changed = asv_site.localize_site(site)
    assert [p.name for p in changed] == ["index.html"]
    index = (site / "index.html").read_text(encoding="utf-8")
    for reference in re.findall(r'(?:src|href)="(vendor/[^"]+)"', index):
        assert (site / reference).is_file(), reference
    assert (site / "vendor/bootstrap/dist/fonts/font.woff").is_file()  # bootstrap.min.css loads ../fonts/
    assert "vendor/jquery/LICENSE.txt" in copied and (site / "vendor/jquery/LICENSE.txt").is_file()


def test_main_refuses_a_missing_configuration(tmp_path, capsys):
    with pytest.raises(SystemExit):
        asv_site.main(["--config", str(tmp_path / "asv.conf.json"), "--no-publish"])
    assert "no such file" in capsys.readouterr().err
