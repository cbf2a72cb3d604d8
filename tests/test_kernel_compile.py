"""The Triton kernel compiled for real, without a GPU: Triton's compiler and its bundled ptxas build a cubin
for sm_80 (A100) and sm_90 (H100) for the specializations the public API launches; a compile error or a
register spill fails the test. The output layer fused into the loss (linear_encouraging_loss) launches the
same kernel on each chunk's float32 logits, whatever the input's dtype: the float32 specializations below. Every
member of the bonus family (log with its tail and start, power, cosine) is a specialization of its own."""
import os
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from el_plugins.core import Bonus, TargetWeights  # noqa: E402
from el_plugins.ops.common import LossConfig  # noqa: E402
from el_plugins.ops.triton_rows import MAX_BLOCK, encouraging_loss_kernel, kernel_constants  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # Triton's compiler and ptxas, per specialization
POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
SMOOTHED = TargetWeights(0.9, 0.1 / 300, 0.9, 0.1 / 300)  # label smoothing and bonus smoothing 0.1, rho 1


def specializations():
    """(name, input dtype, constexprs): what the public API launches (kernel_constants of a real LossConfig) for
    every member of the bonus family and every flag on and off at least once, for each input dtype, at the largest
    block (V >= 4096, 8 warps) and a small one (V = 300 -> 512, 4 warps)."""
    log_tail = Bonus("log", log_end=0.75)
    cases = {  # name: (config, ignore_index, compute_grad, block)
        "log+smoothing+tail+padding+grad": (LossConfig(log_tail, SMOOTHED), 1, True, MAX_BLOCK),
        "log+plain+normal-bonus+grad": (LossConfig(Bonus("log"), TargetWeights(1.0, 0.0, 1.0, 0.0)), None, True,
                                        MAX_BLOCK),
        "log+smoothing-rho0+small-block": (LossConfig(log_tail, TargetWeights(0.9, 0.1 / 300, 0.0, 0.0)), 1, True,
                                           512),
        "log+log-probs+grad": (LossConfig(log_tail, SMOOTHED, True), 1, True, MAX_BLOCK),
        "log+forward-only": (LossConfig(Bonus("log"), SMOOTHED), 1, False, MAX_BLOCK),
        "log+start+grad": (LossConfig(Bonus("log", start=0.5), SMOOTHED), 1, True, MAX_BLOCK),
        "power+start+grad": (LossConfig(Bonus("power", gamma=2.0, start=0.5), SMOOTHED), 1, True, MAX_BLOCK),
        "power+plain+grad": (LossConfig(Bonus("power", gamma=3.0), TargetWeights(1.0, 0.0, 1.0, 0.0)), None, True,
                             MAX_BLOCK),
        "cosine+grad": (LossConfig(Bonus("cosine"), SMOOTHED), 1, True, MAX_BLOCK),
        "cosine+bonus-smoothing-only+small-block": (LossConfig(Bonus("cosine"), TargetWeights(1.0, 0.0, 0.9, 0.1 / 300)),
                                                   None, True, 512),
    }
    for dtype in POINTER:
        for name, (cfg, ignore_index, compute_grad, block) in cases.items():
            yield f"{str(dtype)[6:]}-{name}", dtype, kernel_constants(cfg, ignore_index, compute_grad, block)


def signature(dtype, compute_grad):
    grad = "*fp32" if compute_grad else POINTER[dtype]  # the float32 buffer, or the input passed as a dummy
    return {"x_ptr": POINTER[dtype], "x_row_stride": "i64", "grad_ptr": grad, "grad_row_stride": "i64",
            "target_ptr": "*i64", "scale_ptr": "*fp32", "log_p_target_ptr": "*fp32", "nll_ptr": "*fp32",
            "bonus_ptr": "*fp32", "loss_ptr": "*fp32", "n_cols": "i32", "ignore_index": "i32",
            "nll_target": "fp32", "nll_other": "fp32", "bonus_target": "fp32", "bonus_other": "fp32",
            "log_end": "fp32", "log_one_minus_log_end": "fp32", "gamma": "fp32", "start": "fp32",
            "value_at_start": "fp32"}


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
