"""Each step's conda env pins the same versions as the pip install the workflow runs with by default."""

import re

import yaml

from conftest import ROOT


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)\s*(#.*)?", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def pip_pins():
    lines = []
    for name in ("requirements.txt", "requirements-models.txt"):
        lines += (ROOT / name).read_text().splitlines()
    return pins(lines)


def env_files():
    return sorted((ROOT / "envs").glob("*.yaml"))


def test_every_rule_has_an_env_file_that_exists():
    rules = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    named = set(re.findall(r'conda:\s*\n\s*"\.\./envs/([\w-]+\.yaml)"', rules))
    assert named == {p.name for p in env_files()}
    assert rules.count("conda:") == len(re.findall(r"^rule ", rules, flags=re.M))


def test_env_pins_equal_the_pip_pins():
    reference = pip_pins()
    for path in env_files():
        env = yaml.safe_load(path.read_text())
        pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        env_pins = pins(pip_section)
        assert len(env_pins) == len(pip_section), f"{path.name}: every pip dependency is pinned with =="
        for package, version in env_pins.items():
            assert reference.get(package) == version, f"{path.name}: {package}=={version}, pip has {reference.get(package)}"


def test_installed_versions_are_the_pinned_ones():
    from importlib.metadata import version

    for package, pinned in pip_pins().items():
        assert version(package).split("+")[0] == pinned, package
