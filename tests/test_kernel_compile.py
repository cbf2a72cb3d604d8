"""The Triton kernel compiled for real, without a GPU: Triton's compiler and its bundled ptxas build a cubin
for sm_80 (A100) and sm_90 (H100) for the specializations the public API launches; a compile error or a
register spill fails the test. The output layer fused into the loss (linear_encouraging_loss) launches the
same kernel on each chunk's float32 logits, whatever the input's dtype: the float32 specializations below."""
import os
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from el_plugins.functional import BONUS_CLAMP  # noqa: E402
from el_plugins.ops.encouraging_loss_triton import MAX_BLOCK, encouraging_loss_kernel  # noqa: E402

pytestmark = pytest.mark.slow
POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def specializations():
    """(name, input dtype, constexprs): every flag on and off at least once, for each input dtype, at the
    largest block (V >= 4096, 8 warps) and a small one (V = 300 -> 512, 4 warps), as encouraging_loss_rows
    chooses them."""
    cases = {
        "smoothing+tail+padding+grad": dict(HAS_IGNORE=True, LOG_PROBS=False, SMOOTHING=True, DENSE_BONUS=True,
                                            TAIL=True, COMPUTE_GRAD=True, BLOCK=MAX_BLOCK),
        "plain+normal-bonus+grad": dict(HAS_IGNORE=False, LOG_PROBS=False, SMOOTHING=False, DENSE_BONUS=False,
                                        TAIL=False, COMPUTE_GRAD=True, BLOCK=MAX_BLOCK),
        "smoothing-rho0+small-block": dict(HAS_IGNORE=True, LOG_PROBS=False, SMOOTHING=True, DENSE_BONUS=False,
                                           TAIL=True, COMPUTE_GRAD=True, BLOCK=512),
        "log-probs+grad": dict(HAS_IGNORE=True, LOG_PROBS=True, SMOOTHING=True, DENSE_BONUS=True, TAIL=True,
                               COMPUTE_GRAD=True, BLOCK=MAX_BLOCK),
        "forward-only": dict(HAS_IGNORE=True, LOG_PROBS=False, SMOOTHING=True, DENSE_BONUS=True, TAIL=False,
                             COMPUTE_GRAD=False, BLOCK=MAX_BLOCK),
    }
    for dtype in POINTER:
        for name, flags in cases.items():
            yield f"{str(dtype)[6:]}-{name}", dtype, dict(flags, CLAMP=BONUS_CLAMP)


def signature(dtype, compute_grad):
    grad = "*fp32" if compute_grad else POINTER[dtype]  # the float32 buffer, or the input passed as a dummy
    return {"x_ptr": POINTER[dtype], "x_row_stride": "i64", "grad_ptr": grad, "grad_row_stride": "i64",
            "target_ptr": "*i64", "scale_ptr": "*fp32", "log_p_target_ptr": "*fp32", "nll_ptr": "*fp32",
            "bonus_ptr": "*fp32", "loss_ptr": "*fp32", "n_cols": "i32", "ignore_index": "i32", "w_target": "fp32",
            "q_other": "fp32", "rho": "fp32", "log_end": "fp32", "log_one_minus_log_end": "fp32"}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("name,dtype,constexprs", list(specializations()), ids=lambda v: v if isinstance(v, str) else "")
def test_kernel_compiles_to_cubin_without_spills(tmp_path, arch, name, dtype, constexprs):
    sig = dict(signature(dtype, constexprs["COMPUTE_GRAD"]), **{k: "constexpr" for k in constexprs})
    names = encouraging_loss_kernel.arg_names
    source = ASTSource(fn=encouraging_loss_kernel, signature=sig,
                       constexprs={(names.index(k),): v for k, v in constexprs.items()})
    num_warps = 4 if constexprs["BLOCK"] <= 1024 else 8  # encouraging_loss_rows' rule
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    assert compiled.asm["cubin"][:4] == b"\x7fELF"
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(compiled.asm["ptx"])
    target = re.search(r"^\.target (sm_\w+)", compiled.asm["ptx"], re.M).group(1)  # sm_90a on Hopper
    assert target.startswith(f"sm_{arch}")
    out = subprocess.run([PTXAS, "-v", f"--gpu-name={target}", str(ptx), "-o", str(tmp_path / "kernel.cubin")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert out.returncode == 0, out.stdout
    spills = [(int(a), int(b)) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out.stdout)]
    assert spills and all(s == (0, 0) for s in spills), out.stdout
    assert re.search(r"Used \d+ registers", out.stdout), out.stdout
