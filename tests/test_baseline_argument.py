"""``--baseline`` of the speed experiment: an unknown or unavailable backend is refused while parsing, naming
what is registered and available."""

import pytest

from experiments import speed
from testbed.registry import Backend, available_backends, get_backend, list_backends


def test_an_unknown_baseline_is_refused_while_parsing(capsys):
    with pytest.raises(SystemExit) as info:
        speed.build_parser().parse_args(["--baseline", "nonesuch"])
    assert info.value.code == 2
    assert "--baseline: unknown backend 'nonesuch'; registered: naive" in capsys.readouterr().err


def unavailable_names():
    return [name for name in list_backends() if name not in available_backends()] or [
        pytest.param("none", marks=pytest.mark.skip(reason="every registered backend is available here"))
    ]


@pytest.mark.parametrize("name", unavailable_names())
def test_an_unavailable_baseline_is_refused_while_parsing(capsys, name):
    with pytest.raises(SystemExit):
        speed.build_parser().parse_args(["--baseline", name])
    err = capsys.readouterr().err
    assert f"backend {name!r} is not available here ({get_backend(name).status}" in err


def test_an_unavailable_test_backend_is_refused_as_baseline(capsys, monkeypatch):
    from testbed import registry

    list_backends()  # load the real ones first
    ghost = Backend(
        "t_ghost", "test: never available", get_backend("naive").run, probe=lambda: (False, "no such device")
    )
    monkeypatch.setitem(registry._REGISTRY, ghost.name, ghost)
    with pytest.raises(SystemExit):
        speed.build_parser().parse_args(["--baseline", "t_ghost"])
    assert "backend 't_ghost' is not available here (no such device); available: naive" in capsys.readouterr().err
    assert speed.build_parser().parse_args(["--baseline", "naive"]).baseline == "naive"
