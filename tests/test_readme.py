"""The README's code as written: each python block in a fresh namespace, each shell command through funcvae's
command line, in order, in a scratch folder; install steps are recognised and not run, and any other shell step
fails. The step runs eagerly here, to keep the suite short: benchmarks/readme.py times the same blocks compiled,
as a newcomer runs them."""

import sys
import time
from pathlib import Path

import pytest

import funcvae
import funcvae.cli
from funcvae._runtime import compiling

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import readme  # noqa: E402

BLOCKS = readme.blocks()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the runs the README makes, with its examples/ beside them, as the working directory."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "examples").symlink_to(readme.ROOT / "examples")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setattr(compiling, "compile_backend", lambda compile, device: None)
        yield folder


def test_the_readme_has_python_and_shell_blocks_and_installs_first():
    languages = [b.language for b in BLOCKS]
    assert "python" in languages and "sh" in languages
    first = readme.commands(BLOCKS[0])
    assert BLOCKS[0].language == "sh" and any("pip install" in step for _, _, step in first)


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b.language}-line{b.line}")
def test_the_readme_block_runs_as_written(block, scratch):
    began = time.perf_counter()
    if block.language == "python":
        exec(compile(block.text, f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
    else:
        for number, words, step in readme.commands(block):
            if words is not None:
                assert funcvae.cli.main(readme.expanded(words, scratch)) == 0, f"README.md:{number}: {step}"
    # A watchdog, not a benchmark: three times the README's promise catches an example that grew to minutes.
    assert time.perf_counter() - began < 3 * readme.MINUTE, f"README.md:{block.line} took over 3 minutes"


def test_a_shell_step_that_is_neither_install_nor_funcvae_is_refused():
    with pytest.raises(ValueError, match="neither an install step nor a funcvae command"):
        readme.commands(readme.Block("sh", 1, "python3 -m funcvae train && rm -rf runs\n"))
