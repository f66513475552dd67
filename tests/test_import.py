"""`import igot` is cheap: no torch, transformers, triton or numba until a function needs them."""
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "triton", "numba", "scipy", "matplotlib", "dask", "distributed", "ray")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True,
    ).stdout
    return set(out.split())


@pytest.mark.parametrize("code", [
    "import igot",
    "import igot; dir(igot); igot.__all__",
    "import igot.data, igot.corpus, igot.counting, igot.vocab",
    "import igot.cluster",  # Dask loads when a cluster function runs
])
def test_light_imports_load_no_heavy_module(code):
    loaded = _modules_after(code)
    assert not loaded & set(HEAVY), f"{code!r} loaded {sorted(loaded & set(HEAVY))}"


def test_counting_to_vocab_path_never_needs_torch():
    loaded = _modules_after("import igot.scoring, igot.vocab, igot.counting, igot.corpus")
    assert "torch" not in loaded and "triton" not in loaded


def test_every_public_name_resolves():
    import igot

    for name in igot.__all__:
        assert getattr(igot, name) is not None, name


def test_unknown_attribute_raises():
    import igot

    with pytest.raises(AttributeError, match="no attribute"):
        igot.not_a_thing
