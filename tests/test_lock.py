"""The lock files in ``requirements/`` against ``pyproject.toml``, offline: what pyproject declares is pinned, in its
range and hashed; the image and the demo run the versions the suite tests; and every install line (the README's two
commands, ``.ci/run``, the Dockerfile) installs from a lock with ``--require-hashes``. A change to pyproject's
dependencies without ``requirements/refresh`` fails here rather than in someone's fresh install."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tests.helpers import ROOT

PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = canonicalize_name(PYPROJECT["project"]["name"])
# requirements/<name>.txt locks pyproject's extra <name> (who installs which: README, Dependencies).
LOCKS = ("demo", "serve", "test")
HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
VIA_PYPROJECT = f"{PYPROJECT['project']['name']} (pyproject.toml)"


@dataclass
class Pin:
    """One entry of a lock file: ``name==version`` (with its marker, if any), its hashes, what it is there for."""

    requirement: Requirement
    hashes: list[str]
    via: list[str] = field(default_factory=list)

    @property
    def version(self) -> str:
        (specifier,) = self.requirement.specifier
        return specifier.version


def read_lock(name: str) -> dict[NormalizedName, list[Pin]]:
    """``requirements/<name>.txt`` by package (a universal lock may pin one name twice, under exclusive markers).
    Continuation lines are joined; the ``# via`` comments after an entry are its sources."""
    text = re.sub(r"\s*\\\n\s*", " ", (ROOT / "requirements" / f"{name}.txt").read_text())
    pins: dict[NormalizedName, list[Pin]] = {}
    last: Pin | None = None
    for line in text.splitlines():
        if line.startswith(" ") and last is not None:  # an annotation of the entry above
            source = line.strip().removeprefix("#").strip().removeprefix("via").strip()
            if source:
                last.via.append(source)
        elif line and not line.startswith("#"):
            spec = line.split(" --hash=", 1)[0]
            assert spec.split(";", 1)[0].count("==") == 1, f"{name}.txt: not one exact pin: {line}"
            last = Pin(Requirement(spec), HASH.findall(line))
            pins.setdefault(canonicalize_name(last.requirement.name), []).append(last)
    return pins


def declared(extra: str) -> list[Requirement]:
    """What installing the project with ``extra`` asks for: its dependencies, the extra with the extras it names
    (``authority[demo,serve]``), and the build backend (pinned too, for ``--no-build-isolation``)."""
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    wanted += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    extras, seen = [extra], set()
    while extras:
        name = extras.pop()
        seen.add(name)
        for requirement in map(Requirement, PYPROJECT["project"]["optional-dependencies"][name]):
            if canonicalize_name(requirement.name) == PROJECT:
                extras += sorted(requirement.extras - seen)
            else:
                wanted.append(requirement)
    return wanted


@pytest.mark.parametrize("lock", LOCKS)
def test_every_declared_dependency_is_pinned_in_its_range_with_hashes(lock: str) -> None:
    pins = read_lock(lock)
    for requirement in declared(lock):
        found = pins.get(canonicalize_name(requirement.name))
        assert found, f"{requirement} is in pyproject.toml but not in requirements/{lock}.txt: run requirements/refresh"
        for pin in found:
            assert requirement.specifier.contains(pin.version, prereleases=True), (
                f"requirements/{lock}.txt pins {pin.requirement}, outside pyproject's {requirement}: "
                "run requirements/refresh"
            )


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_has_a_hash_and_nothing_is_locked_for_a_dependency_pyproject_dropped(lock: str) -> None:
    declared_names = {canonicalize_name(r.name) for r in declared(lock)}
    for name, pins in read_lock(lock).items():
        for pin in pins:
            assert pin.hashes, f"requirements/{lock}.txt: {pin.requirement} has no --hash"
            if VIA_PYPROJECT in pin.via:  # uv's own note: pyproject asked for it directly
                assert name in declared_names, f"requirements/{lock}.txt still locks {name}: run requirements/refresh"


def test_the_build_backend_locked_is_pyprojects() -> None:
    lines = (ROOT / "requirements" / "build.in").read_text().splitlines()
    locked = {str(Requirement(line)) for line in lines if line and not line.startswith("#")}
    assert locked == {str(Requirement(r)) for r in PYPROJECT["build-system"]["requires"]}


@pytest.mark.parametrize("lock", ["serve", "demo"])
def test_the_image_and_the_demo_run_the_versions_the_suite_tests(lock: str) -> None:
    tested = read_lock("test")
    for name, pins in read_lock(lock).items():
        assert name in tested, f"requirements/{lock}.txt has {name}, test.txt does not: run requirements/refresh"
        for pin in pins:
            assert pin.version in {p.version for p in tested[name]}, (pin.requirement, tested[name])
            assert set(pin.hashes) <= {h for p in tested[name] for h in p.hashes}


def readme_commands() -> list[str]:
    """The two command lines at the top of the README (its first ``sh`` block)."""
    block = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0]
    return block.splitlines()


def installs_locked(command: str, lock: str, project: str) -> bool:
    """``command`` installs exactly ``lock``, every file checked against its hash, then ``project`` alone without
    build isolation: nothing that is not pinned and hashed is downloaded."""
    locked = rf"pip install (-q )?--require-hashes --no-deps -r requirements/{lock}\.txt( |$)"
    alone = rf"pip install (-q )?--no-deps --no-build-isolation {re.escape(project)}( |$)"
    return bool(re.search(locked, command, re.MULTILINE) and re.search(alone, command, re.MULTILINE))


def test_the_readme_commands_and_ci_install_from_the_locks() -> None:
    demo, tests = readme_commands()
    assert demo.startswith("python3 -m venv .venv && ")
    assert installs_locked(demo, "demo", "-e .")
    assert demo.endswith("&& .venv/bin/authority serve --demo")
    assert installs_locked(tests, "test", "-e .")
    assert tests.endswith("&& .venv/bin/python -m pytest")
    assert (ROOT / ".ci" / "run").read_text().splitlines()[-1] == tests  # CI is exactly the second command


def test_the_dockerfile_installs_the_image_lock_with_hashes_on_a_pinned_base() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = "\n".join(line for line in dockerfile.splitlines() if line.startswith("RUN "))
    assert installs_locked(runs, "serve", "."), runs
    assert "COPY requirements/serve.txt " in dockerfile
    assert "!requirements/serve.txt" in (ROOT / ".dockerignore").read_text().splitlines()
    bases = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("FROM ")]
    assert len(set(bases)) == 1, bases  # both stages on the same image
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", bases[0]), bases


def test_the_installed_set_is_complete() -> None:
    """The locks are installed with --no-deps, so pip adds nothing they forgot: a dependency missing from a lock
    (for this platform and Python) shows here, as a requirement of an installed distribution that is not met."""
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
