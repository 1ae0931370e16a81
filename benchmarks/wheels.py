"""Wheels for the GPU machine (issue 27): a wheel repacked without some of its files, a
wheel's RECORD checked against its contents, and the carried wheels' requirements
checked against the interpreter that will use them.

    python -m benchmarks.wheels strip SRC.whl DST.whl --drop ray/jars/
    python -m benchmarks.wheels check WHEEL.whl ...
    python -m benchmarks.wheels requires DIR [--extras ray=tune,train]

Used by ``benchmarks/gpu_wheels.sh`` (strip, check: on the CPU machine that downloads
them) and ``benchmarks/gpu_check.sh`` (requires: on the GPU machine, after installing
them).  A wheel's RECORD lists every file with its sha256 (urlsafe base64, no padding)
and size; installers read it, so a repacked wheel must list exactly what it holds.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import sys
import zipfile
from pathlib import Path

SIGNATURES = (".dist-info/RECORD.jws", ".dist-info/RECORD.p7s")


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _record_name(names: list[str]) -> str:
    records = [n for n in names if n.endswith(".dist-info/RECORD") and n.count("/") == 1]
    if len(records) != 1:
        raise ValueError(f"expected one top-level *.dist-info/RECORD, found {records}")
    return records[0]


def strip(src: Path, dst: Path, drop: list[str]) -> dict:
    """Copy the wheel ``src`` to ``dst`` without the files whose path starts with one of
    ``drop``, and without their RECORD lines; every other entry keeps its bytes, its
    permissions (the executables inside) and its date."""
    drop = [d.rstrip("/") + "/" if not d.endswith("/") else d for d in drop]
    dropped, dropped_bytes = [], 0
    with zipfile.ZipFile(src) as zin:
        record_name = _record_name(zin.namelist())
        rows = list(csv.reader(io.StringIO(zin.read(record_name).decode())))
        kept_rows = [row for row in rows if row and not any(row[0].startswith(d) for d in drop)]
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(kept_rows)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
            for info in zin.infolist():
                if any(info.filename.startswith(d) for d in drop):
                    dropped.append(info.filename)
                    dropped_bytes += info.file_size
                    continue
                data = buffer.getvalue().encode() if info.filename == record_name else zin.read(info)
                out = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                out.external_attr, out.create_system = info.external_attr, info.create_system
                out.compress_type = zipfile.ZIP_DEFLATED if not info.is_dir() else zipfile.ZIP_STORED
                zout.writestr(out, data)
    return {"dropped_files": len(dropped), "dropped_bytes": dropped_bytes, "record_lines": len(kept_rows)}


def check(path: Path) -> list[str]:
    """What is wrong with the wheel's RECORD: a file it omits, a line for a file that is not
    there, a wrong hash or size.  Empty when the RECORD matches the zip exactly."""
    problems = []
    with zipfile.ZipFile(path) as z:
        names = [i.filename for i in z.infolist() if not i.is_dir()]
        record_name = _record_name(names)
        rows = {row[0]: row for row in csv.reader(io.StringIO(z.read(record_name).decode())) if row}
        for name in names:
            if name == record_name or name.endswith(SIGNATURES):
                continue
            row = rows.get(name)
            if row is None:
                problems.append(f"{name}: in the wheel, not in its RECORD")
                continue
            data = z.read(name)
            if row[1] != record_hash(data):
                problems.append(f"{name}: RECORD hash {row[1]}, the file's {record_hash(data)}")
            if row[2] != str(len(data)):
                problems.append(f"{name}: RECORD size {row[2]}, the file's {len(data)}")
        present = set(names)
        problems += [f"{name}: in the RECORD, not in the wheel" for name in rows if name not in present]
    return problems


def requirements(folder: Path, extras: dict[str, set[str]]) -> list[str]:
    """Each carried wheel's requirements (and those of the ``extras`` named per project)
    that this interpreter does not satisfy: a missing distribution, or a version outside
    the specifier.  Run with the installed wheels on the path."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    problems = []
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
            lines = z.read(meta).decode().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Name:"))
        wanted = {""} | extras.get(canonicalize_name(name), set())
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in wanted):
                continue
            try:
                version = metadata.version(req.name)
            except metadata.PackageNotFoundError:
                problems.append(f"{name} needs {req}: not installed")
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                problems.append(f"{name} needs {req}: {req.name} {version} is installed")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("strip", help="repack a wheel without the files under the --drop prefixes")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--drop", action="append", required=True, metavar="PREFIX")
    p = sub.add_parser("check", help="a wheel's RECORD against its contents")
    p.add_argument("wheels", type=Path, nargs="+")
    p = sub.add_parser("requires", help="the wheels' requirements against this interpreter")
    p.add_argument("folder", type=Path)
    p.add_argument("--extras", action="append", default=[], metavar="NAME=EXTRA,EXTRA")
    args = parser.parse_args(argv)
    if args.command == "strip":
        done = strip(args.src, args.dst, args.drop)
        print(
            f"{args.dst.name}: dropped {done['dropped_files']} files ({done['dropped_bytes'] / 2**20:.1f} MiB "
            f"uncompressed) under {', '.join(args.drop)}; RECORD has {done['record_lines']} lines"
        )
        return 0
    if args.command == "check":
        bad = 0
        for wheel in args.wheels:
            problems = check(wheel)
            bad += bool(problems)
            print(f"{wheel.name}: " + ("RECORD matches its contents" if not problems else f"{len(problems)} problems"))
            for line in problems[:20]:
                print(f"  {line}")
        return 1 if bad else 0
    extras = {}
    for item in args.extras:
        name, _, names = item.partition("=")
        extras[name] = set(names.split(","))
    problems = requirements(args.folder, extras)
    for line in problems:
        print(f"  unmet: {line}")
    print("requirements of the carried wheels: " + ("all met" if not problems else f"{len(problems)} unmet"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
