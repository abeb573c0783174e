#!/usr/bin/env python3
"""Registers, shared memory and spills of each kernel of kernels/, on a machine without CUDA.

Compiles a kernel family the way the CUDA backend does (common.cuh prepended, NVRTC for
compute_90, with optional -D definitions as TESSERA_KERNEL_DEFINES passes them), then assembles
the PTX for sm_90 with ptxas and prints what ptxas reports per kernel. NVRTC and ptxas come from
NVIDIA's PyPI wheels (nvidia-cuda-nvrtc, nvidia-cuda-nvcc), downloaded once into
~/.cache/tessera/cuda-tools. Occupancy follows from the registers: an SM has 65,536.

    scripts/kernel_regs.py gemv
    scripts/kernel_regs.py gemv NAME=VALUE   # a variant the kernel offers (#ifndef NAME)

The same NVRTC lets the CUDA crate's `every_family_compiles_when_nvrtc_is_present` test run
here: LD_LIBRARY_PATH=~/.cache/tessera/cuda-tools/nvidia/cu13/lib (after a first run of this
script, which also links libnvrtc.so there).
"""

import ctypes
import pathlib
import re
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOOLS = pathlib.Path.home() / ".cache/tessera/cuda-tools"
WHEELS = ["nvidia-cuda-nvrtc>=13,<14", "nvidia-cuda-nvcc>=13,<14"]
LIB = TOOLS / "nvidia/cu13/lib"
PTXAS = TOOLS / "nvidia/cu13/bin/ptxas"


def install():
    if (LIB / "libnvrtc.so").exists() and PTXAS.exists():
        return
    download = TOOLS / "wheels"
    for wheel in WHEELS:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), wheel],
                       check=True)
    for wheel in download.glob("*.whl"):
        zipfile.ZipFile(wheel).extractall(TOOLS)
    PTXAS.chmod(0o755)
    (LIB / "libnvrtc.so").unlink(missing_ok=True)
    (LIB / "libnvrtc.so").symlink_to("libnvrtc.so.13")


def ptx(family, defines):
    nvrtc = ctypes.CDLL(str(LIB / "libnvrtc.so"))
    source = (ROOT / "kernels/common.cuh").read_text() + "\n" + (ROOT / f"kernels/{family}.cu").read_text()
    prog = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{family}.cu".encode(), 0, None, None) == 0
    options = [b"--gpu-architecture=compute_90", b"--std=c++17"] + [f"-D{d}".encode() for d in defines]
    status = nvrtc.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
    size = ctypes.c_size_t()
    if status != 0:
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        sys.exit(f"NVRTC failed on kernels/{family}.cu:\n{log.value.decode()}")
    nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size))
    text = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(prog, text)
    return text.value


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    family, defines = sys.argv[1], sys.argv[2:]
    if not (ROOT / f"kernels/{family}.cu").exists():
        sys.exit(f"no kernels/{family}.cu (the families are the .cu files of kernels/)")
    install()
    out = TOOLS / f"{family}.ptx"
    out.write_bytes(ptx(family, defines))
    result = subprocess.run([str(PTXAS), "-arch=sm_90", "-v", str(out), "-o", "/dev/null"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"ptxas failed:\n{result.stderr}")
    kernel, spills = None, "spills unknown"
    for line in result.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            spills = f"spills {m.group(1)}/{m.group(2)} B"
        elif m := re.search(r"Used (\d+) registers", line):
            smem = re.search(r"(\d+) bytes smem", line)
            print(f"{kernel}: {m.group(1)} registers, {smem.group(1) if smem else 0} B static shared memory, {spills}")


if __name__ == "__main__":
    main()
