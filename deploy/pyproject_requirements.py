"""Print pyproject.toml's base dependencies plus one extra, one requirement a line.

Used inside the image build, so that the dependency layer depends on pyproject.toml
alone (a code or model change then reuses it):

    python3 pyproject_requirements.py pyproject.toml serve-cpu > requirements.txt
"""

import sys
import tomllib


def requirements(pyproject: str, extra: str) -> list[str]:
    with open(pyproject, "rb") as handle:
        project = tomllib.load(handle)["project"]
    extras = project.get("optional-dependencies", {})
    if extra not in extras:
        raise SystemExit(f"{pyproject} has no extra {extra!r} (has {sorted(extras)})")
    own = project["name"]
    picked = list(project.get("dependencies", []))
    for requirement in extras[extra]:
        if requirement.split("[")[0].strip().lower() == own:
            raise SystemExit(f"extra {extra!r} refers to {own} itself ({requirement}); list its packages instead")
        picked.append(requirement)
    return picked


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print("\n".join(requirements(sys.argv[1], sys.argv[2])))
