#!/usr/bin/env python3
"""A stand-in `apptainer` for the tests: Snakemake's `--software-deployment-method apptainer` runs each job as
`apptainer exec --home CWD [--bind ...] IMAGE.sif bash -c CMD`; this runs that command with podman instead.

Apptainer itself is not packaged for Debian bookworm, and no Snakemake release on the index loads the container
software-deployment plugin. The "SIF" a rule's `container:` names is a text file `podman-image: <ref>`
(written by the test), so the rule -> image choice of the workflow is the real one; only the engine differs.
"""

from __future__ import annotations

import os
import sys

MARKER = "podman-image:"
VALUE_OPTIONS = {"--home", "--bind", "-B", "--pwd", "--env", "--workdir"}


def podman_command(argv: list[str]) -> list[str]:
    """`exec [options] IMAGE COMMAND...` -> `podman run ... REF COMMAND...`."""
    home, pwd, binds, env, rest = None, None, [], [], list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        name, _, inline = option.partition("=")
        if name in VALUE_OPTIONS:
            value = inline or rest.pop(0)
            if name == "--home":
                home = value
            elif name == "--pwd":
                pwd = value
            elif name in ("--bind", "-B"):
                binds += [b for b in value.split(",") if b]
            elif name == "--env":
                env += value.split(",")
        # flags (--nv, --no-privs, --quiet, --silent, --cleanenv): nothing to do for podman here
    image, command = rest[0], rest[1:]
    with open(image) as stream:
        text = stream.read(200)
    if not text.startswith(MARKER):
        sys.exit(f"podman_apptainer: {image} is not a stand-in file ('{MARKER} <ref>'): use a real apptainer")
    ref = text[len(MARKER) :].strip()
    options = ["--rm", "--network=none"]
    workdir = pwd or home or os.getcwd()
    for path in dict.fromkeys([home or os.getcwd(), *binds]):
        source, _, target = path.partition(":")
        options += ["-v", f"{source}:{target or source}"]
    options += ["-w", workdir]
    for key, value in os.environ.items():
        for prefix in ("SINGULARITYENV_", "APPTAINERENV_"):
            if key.startswith(prefix):
                env.append(f"{key[len(prefix) :]}={value}")
    for item in env:
        options += ["-e", item]
    return ["podman", "run", *options, ref, *command]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print("apptainer version 1.3.6")  # Snakemake parses the last word
        return 0
    while argv and argv[0] in ("--quiet", "--silent", "-q", "-s"):
        argv = argv[1:]
    if argv[:1] != ["exec"]:
        sys.exit(f"podman_apptainer: only `exec` and `--version` are supported, got {argv[:2]}")
    command = podman_command(argv[1:])
    os.execvp(command[0], command)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
