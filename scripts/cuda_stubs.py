"""Link stubs for the CUDA libraries that candle links dynamically (scripts/cuda_build.sh).

candle 0.11 links libcuda, libcudart, libcublas, libcublasLt, libcurand, libnvrtc (and
libcudnn with `--features cudnn`) through cudarc's `dynamic-linking`. A machine without CUDA
has none of them, so the final link fails. Each stub here is a tiny shared library carrying
the real library's SONAME and defining, as an empty function, every symbol the link asks of
it: the binary then records the SONAME in its NEEDED entries and the dynamic loader binds the
real library on the GPU machine. The stubs are never meant to be loaded: a constructor in
each one stops the program with a message if they are.

The symbol list is not written by hand. It is the union of
- the undefined symbols of the compiled Rust libraries and native archives under the target
  directory (`--scan DIR`, `nm --undefined-only` on every .rlib and .a), and
- the undefined symbols a failed link names (`--link-log FILE`),
kept in `symbols.txt` beside the stubs so that later runs only add to it. Each symbol goes to
its library by the prefix NVIDIA's libraries give their exports (`LIBRARIES` below); a symbol
with none of those prefixes is not a CUDA symbol and is left to the linker.

    python3 scripts/cuda_stubs.py --out target/cuda-stubs --cuda-major 13 \
        --scan target/release/deps --scan target/release/build [--link-log build.log]

Prints one line per library (SONAME, number of symbols) and, with --link-log, the undefined
references it could not place, then exits 0. Exits 1 on a tool failure (no C compiler).
"""

import argparse
import os
import pathlib
import re
import subprocess
import sys

# (name given to -l, SONAME, predicate on the symbol); the first match wins, so cublasLt comes
# before cublas. The driver exports `cu` + capital (cuInit), the runtime `cuda` + capital and
# `__cuda*` (what nvcc's generated host code calls), the others their library's name.
# SONAMEs follow NVIDIA's numbering: the toolkit's major version for the runtime, cuBLAS and
# NVRTC; libcuda.so.1 for the driver; cuRAND and cuDNN keep majors of their own (10 and 9).
def libraries(cuda_major):
    return [
        ("cublasLt", "libcublasLt.so.%d" % cuda_major, lambda s: s.startswith("cublasLt")),
        ("cublas", "libcublas.so.%d" % cuda_major, lambda s: s.startswith("cublas")),
        ("curand", "libcurand.so.10", lambda s: s.startswith("curand")),
        ("nvrtc", "libnvrtc.so.%d" % cuda_major, lambda s: s.startswith("nvrtc")),
        ("cudnn", "libcudnn.so.9", lambda s: s.startswith("cudnn")),
        ("cudart", "libcudart.so.%d" % cuda_major,
         lambda s: s.startswith("__cuda") or re.match(r"cuda[A-Z]", s) is not None),
        ("cuda", "libcuda.so.1", lambda s: re.match(r"cu[A-Z]", s) is not None),
    ]


def library_of(symbol, libs):
    for name, _, owns in libs:
        if owns(symbol):
            return name
    return None


def undefined_in(path):
    """Undefined symbols of an archive's objects (an .rlib's metadata member is skipped)."""
    out = subprocess.run(["nm", "--undefined-only", "--format=posix", str(path)],
                         capture_output=True, text=True)
    # nm names the metadata member of an .rlib "file format not recognized" and goes on.
    symbols = set()
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] in ("U", "w", "v"):
            symbols.add(parts[0].split("@")[0])
    return symbols


def scanned(dirs):
    symbols = set()
    for d in dirs:
        for path in pathlib.Path(d).rglob("*"):
            if path.suffix in (".rlib", ".a") and path.is_file():
                symbols |= undefined_in(path)
    return symbols


# GNU ld: "undefined reference to `cuInit'"; lld (rustc's default linker on x86-64 Linux since
# 1.90): "undefined symbol: cuInit", at most 20 of them (the scan of the objects finds the rest).
UNDEFINED = re.compile(r"undefined reference to [`'\"]([^`'\"]+)[`'\"]|undefined symbol: (\S+)")


def from_link_log(path):
    text = pathlib.Path(path).read_text(errors="replace")
    return {(m.group(1) or m.group(2)).split("@")[0] for m in UNDEFINED.finditer(text)}


def c_source(soname, symbols):
    lines = [
        "/* Link stub for %s, made by scripts/cuda_stubs.py: not a CUDA library. */" % soname,
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "__attribute__((constructor)) static void refuse(void) {",
        '    fprintf(stderr, "%s here is a link stub (scripts/cuda_stubs.py), not the CUDA '
        'library: put the real one on LD_LIBRARY_PATH (scripts/gpu_run.sh does)\\n");'
        % soname,
        "    exit(127);",
        "}",
    ]
    lines += ["void %s(void) {}" % s for s in sorted(symbols)]
    return "\n".join(lines) + "\n"


def build_stub(out, name, soname, symbols, cc):
    src = out / "src" / ("lib%s.c" % name)
    lib = out / "lib" / ("lib%s.so" % name)
    text = c_source(soname, symbols)
    if lib.exists() and src.exists() and src.read_text() == text:
        return False
    src.write_text(text)
    subprocess.run([cc, "-shared", "-fPIC", "-O0", "-Wl,-soname," + soname, "-o", str(lib),
                    str(src)], check=True)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="stub folder (lib/, src/, symbols.txt)")
    ap.add_argument("--cuda-major", type=int, required=True, help="toolkit major, e.g. 13")
    ap.add_argument("--scan", action="append", default=[], help="folder of .rlib/.a files")
    ap.add_argument("--link-log", help="output of a failed cargo build")
    args = ap.parse_args()

    out = pathlib.Path(args.out)
    (out / "lib").mkdir(parents=True, exist_ok=True)
    (out / "src").mkdir(exist_ok=True)
    libs = libraries(args.cuda_major)
    known_file = out / "symbols.txt"
    known = set(known_file.read_text().split()) if known_file.exists() else set()

    found = scanned(args.scan)
    unplaced = set()
    if args.link_log:
        from_log = from_link_log(args.link_log)
        unplaced = {s for s in from_log if library_of(s, libs) is None}
        found |= from_log
    symbols = known | {s for s in found if library_of(s, libs) is not None}
    known_file.write_text("".join(s + "\n" for s in sorted(symbols)))

    cc = os.environ.get("CC", "cc")
    for name, soname, _ in libs:
        mine = {s for s in symbols if library_of(s, libs) == name}
        try:
            rebuilt = build_stub(out, name, soname, mine, cc)
        except (OSError, subprocess.CalledProcessError) as e:
            print("cuda_stubs: cannot compile the %s stub with %s: %s" % (soname, cc, e),
                  file=sys.stderr)
            return 1
        print("  %-22s %4d symbols%s" % (soname, len(mine), " (rebuilt)" if rebuilt else ""))
    for s in sorted(unplaced):
        print("  not a CUDA symbol, left to the linker: %s" % s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
