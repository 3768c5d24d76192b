"""Every way quantserve gets built ships its catalog, and the installed `serve` loads it.

Four builds, each installed into a fresh venv that cannot see the repository, then `serve models` and
`serve probe --json --model mistral-7b-q4` run there:
- the wheel built from exactly the paths Dockerfile.cuda copies into its build stage (read from the file,
  .dockerignore applied), as `pip install '.[cuda]'` in the image builds it;
- the wheel `pip wheel .` makes from a clean clone (only committed files count);
- the wheel built from the sdist of that clone;
- an editable install of that clone (the README's `pip install -e .`).
The built artifacts must hold serve/models.toml as a regular file equal to the top-level models.toml, and
the chat page's assets (serve/api/web/static/) as they are in the source tree.

There is no Docker engine here: the image itself is never built. Each build runs with pip's build isolation,
as in the image. `serve` runs with a clean HOME (no user catalog) from an empty folder. The few libraries the
two commands import come from one shared venv that holds no quantserve (installing every dependency,
llama-cpp-python included, into each venv would take minutes).
"""
from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from dockerfile_parse import DockerfileParser

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.cuda"
CATALOG = REPO / "models.toml"
WEB_STATIC = REPO / "serve" / "api" / "web" / "static"
WEB_ASSETS = ("index.html", "app.js", "style.css")
MODEL = "mistral-7b-q4"
# what `serve models` and `serve probe` import beyond quantserve itself (the rest of its dependencies,
# llama-cpp-python included, load only when serving)
COMMAND_DEPENDENCIES = ("huggingface_hub", "psutil", "rich")
PIP_TIMEOUT = 300


def _run(args: list, cwd: Path | None = None, env: dict | None = None, timeout: float = PIP_TIMEOUT) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _pip(*args) -> str:
    return _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args])


# --- what Dockerfile.cuda's build stage copies -----------------------------------------------------------

def _install_stage(parser: DockerfileParser) -> tuple[str, list[list[str]]]:
    """(WORKDIR, COPY arguments) of the stage whose RUN installs the project with `pip install .`."""
    workdir, copies = "/", []
    for instruction in parser.structure:
        kind, value = instruction["instruction"], instruction["value"]
        if kind == "FROM":
            workdir, copies = "/", []
        elif kind == "WORKDIR":
            workdir = str(PurePosixPath(workdir, value))
        elif kind in ("COPY", "ADD"):
            copies.append(shlex.split(value))
        elif kind == "RUN" and "pip install" in value and any(w.strip("'\"").startswith(".") for w in value.split()):
            return workdir, copies
    raise AssertionError("Dockerfile.cuda has no RUN that installs the project (`pip install .`)")


def _dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "exceptions (!) in .dockerignore: extend this test"
    return patterns


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    # Docker's rules: patterns match from the context root, one component per element; `**` spans any number
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _ignored(rel: PurePosixPath, patterns: list[str]) -> bool:
    # an excluded folder excludes everything below it
    prefixes = [rel.parts[:n] for n in range(1, len(rel.parts) + 1)]
    return any(_matches(p, tuple(PurePosixPath(pat).parts)) for pat in patterns for p in prefixes)


def _copy_build_context(dest_root: Path) -> None:
    """Copy into dest_root what the install stage's COPY lines put under its WORKDIR."""
    workdir, copies = _install_stage(DockerfileParser(fileobj=DOCKERFILE.open("rb")))
    patterns = _dockerignore_patterns()
    for args in copies:
        if any(a.startswith("--from") for a in args):
            continue
        *sources, dest = [a for a in args if not a.startswith("--")]
        target = PurePosixPath(workdir, dest)
        assert target.is_relative_to(workdir), f"COPY {args} lands outside WORKDIR {workdir}"
        into_folder = dest.endswith("/") or len(sources) > 1
        for source in sources:
            rel = PurePosixPath(source)
            path = REPO / rel
            assert path.exists() and not _ignored(rel, patterns), f"COPY {source}: not in the build context"
            out = dest_root / target.relative_to(workdir)
            if path.is_dir():
                # symlinks=True: like COPY, keep a link a link (a link to a file not copied then dangles)
                shutil.copytree(path, out, symlinks=True, dirs_exist_ok=True, ignore=_ignore_below(patterns))
            else:
                out = out / path.name if into_folder else out
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out, follow_symlinks=False)


def _ignore_below(patterns: list[str]):
    def ignore(folder: str, names: list[str]) -> list[str]:
        rel = PurePosixPath(Path(folder).relative_to(REPO).as_posix())
        return [n for n in names if _ignored(rel / n, patterns)]
    return ignore


# --- builds ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_clone(tmp_path_factory) -> Path:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: no clean clone to build from")
    clone = tmp_path_factory.mktemp("clone") / "quantserve"
    _run(["git", "clone", "--quiet", "--no-hardlinks", REPO, clone])
    return clone


def _wheel(source: Path, out: Path) -> Path:
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", out, source)
    (wheel,) = out.glob("quantserve-*.whl")
    return wheel


def _check_wheel(wheel: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "serve/models.toml" in names, f"{wheel.name} has no serve/models.toml"
        assert archive.read("serve/models.toml") == CATALOG.read_bytes()
        for asset in WEB_ASSETS:  # the chat page works offline only if its files ship in the package
            assert f"serve/api/web/static/{asset}" in names, f"{wheel.name} has no chat page {asset}"
            assert archive.read(f"serve/api/web/static/{asset}") == (WEB_STATIC / asset).read_bytes()
        # a symbolic link stored in a zip keeps S_IFLNK in the high bits of external_attr
        assert not any((archive.getinfo(n).external_attr >> 16) & 0o170000 == 0o120000 for n in names)
    return wheel


def _docker_wheel(tmp: Path, clone: Path) -> Path:
    context = tmp / "context"
    _copy_build_context(context)
    return _check_wheel(_wheel(context, tmp / "dist"))


def _clone_wheel(tmp: Path, clone: Path) -> Path:
    return _check_wheel(_wheel(clone, tmp / "dist"))


def _sdist_wheel(tmp: Path, clone: Path) -> Path:
    script = "import sys, setuptools.build_meta as b; print(b.build_sdist(sys.argv[1]))"
    name = _run([sys.executable, "-c", script, tmp / "sdist"], cwd=clone).strip().splitlines()[-1]
    sdist = tmp / "sdist" / name
    with tarfile.open(sdist) as archive:
        members = archive.getmembers()
        assert not [m.name for m in members if m.issym() or m.islnk()], "links in the sdist"
        catalog = next(m for m in members if m.name.endswith("/models.toml") and m.name.count("/") == 1)
        assert archive.extractfile(catalog).read() == CATALOG.read_bytes()
    return _check_wheel(_wheel(sdist, tmp / "dist"))


def _editable(tmp: Path, clone: Path) -> Path:
    return clone


BUILDS = [pytest.param(_docker_wheel, id="dockerfile-paths-wheel"), pytest.param(_clone_wheel, id="clone-wheel"),
          pytest.param(_sdist_wheel, id="sdist-wheel"), pytest.param(_editable, id="clone-editable")]


# --- installs --------------------------------------------------------------------------------------------

def _site_packages(env_dir: Path) -> Path:
    return next(env_dir.glob("lib/python3*/site-packages"))


@pytest.fixture(scope="module")
def command_dependencies(tmp_path_factory) -> Path:
    """site-packages of a venv holding only what the two commands import, at quantserve's pinned versions."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [d for d in declared if d.split(";")[0].strip().replace("-", "_").startswith(COMMAND_DEPENDENCIES)]
    assert len(wanted) == len(COMMAND_DEPENDENCIES), wanted
    env_dir = tmp_path_factory.mktemp("deps") / "venv"
    venv.create(env_dir, with_pip=False)
    _pip("--python", env_dir / "bin" / "python", "install", "--quiet", *wanted)
    return _site_packages(env_dir)


def _fresh_venv(env_dir: Path, dependencies: Path, artifact: Path) -> Path:
    venv.create(env_dir, with_pip=False)
    (_site_packages(env_dir) / "command_dependencies.pth").write_text(f"{dependencies}\n")
    editable = ["--editable"] if artifact.is_dir() else []
    _pip("--python", env_dir / "bin" / "python", "install", "--quiet", "--no-deps", *editable, artifact)
    return env_dir / "bin"


@pytest.mark.parametrize("build", BUILDS)
def test_installed_serve_loads_the_catalog(build, clean_clone, command_dependencies, tmp_path):
    bin_dir = _fresh_venv(tmp_path / "venv", command_dependencies, build(tmp_path, clean_clone))
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "HF_HOME": str(tmp_path / "hf"), "LANG": "C.UTF-8"}

    where = _run([bin_dir / "python", "-c", "import serve; print(serve.__file__)"], cwd=workdir, env=env)
    expected_root = clean_clone if build is _editable else tmp_path / "venv"
    assert Path(where.strip()).is_relative_to(expected_root), where

    listing = _run([bin_dir / "serve", "models"], cwd=workdir, env=env, timeout=60)
    names = {line.split()[0] for line in listing.splitlines()[1:] if line and not line.startswith(" ")}
    assert names == set(tomllib.loads(CATALOG.read_text())["models"]), listing

    report = json.loads(_run([bin_dir / "serve", "probe", "--json", "--model", MODEL], cwd=workdir, env=env,
                             timeout=60))
    assert report["error"] is None, report["error"]
    assert report["plan"]["model"] == MODEL and report["plan"]["backend"] in ("llamacpp", "vllm")
    assert report["plan"]["reasons"]
