"""What the encoder benchmark reports: its rows, the machine they were measured on (from
towerlite.machine), the package versions, the markdown table, one attribution line per source
of speed, and the goal line."""

from __future__ import annotations

from dataclasses import dataclass

from towerlite.machine import cpu_info, load_average, package_versions, usable_cores

from .peer import PEER_NAME

GOAL_RATIO, GOAL_COSINE = 30.0, 0.99


@dataclass
class Row:
    name: str
    kind: str  # "teacher" | "student" | "variant" | "peer"
    order: str  # "sorted" (batches by token count) | "input"
    sentences_per_s: float
    mb: float | None = None
    parity: dict | None = None  # vs the row's own fp32 PyTorch model
    parity_ref: str | None = None
    ratio_to_teacher: float | None = None


def machine_info() -> dict:
    """towerlite.machine.cpu_info (CPU model, vector flags, cores: int8 speed depends on
    avx512_vnni/amx more than on anything else), the usable cores and the load average."""
    return {**cpu_info(), "usable_cores": usable_cores(), "loadavg_start": load_average()}


def flags_text(machine: dict) -> str:
    """'avx2 only' or 'avx512_vnni' style: the int8 path the CPU offers."""
    int8 = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in machine["cpu_flags"]]
    return ", ".join(int8) if int8 else ("avx2 only (no VNNI)" if "avx2" in machine["cpu_flags"]
                                         else "no avx2")


def versions() -> dict:
    return package_versions("torch", "transformers", "tokenizers", "onnx", "onnxruntime",
                            "optimum", "optimum-onnx", "numpy")


def table(rows: list[Row]) -> str:
    lines = ["| row | batches | sentences/s | × teacher | mean cos vs own fp32 PyTorch | MB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cos = (f"{r.parity['mean_cosine']:.4f} (min {r.parity['min_cosine']:.3f})" if r.parity
               else "n/a" if r.kind == "teacher" else "(reference)")
        lines.append(f"| {r.name} | {'length-sorted' if r.order == 'sorted' else 'input order'} "
                     f"| {r.sentences_per_s:.1f} | {r.ratio_to_teacher:.1f}× | {cos} "
                     f"| {'' if r.mb is None else f'{r.mb:.1f}'} |")
    return "\n".join(lines)


def attribution(rows: list[Row], best: Row | None, student_params: int,
                peer_params: int | None) -> list[str]:
    """One line per source of speed: what fusions, int8 kernels, sorting and a smaller student
    gave."""
    def get(name, order="sorted"):
        return next((r for r in rows if r.name == name and r.order == order), None)

    def ratio(a, b):
        return f"{a.sentences_per_s / b.sentences_per_s:.2f}×" if a and b else "n/a"

    lines = []
    st, fp32, opt, i8 = (get("student PyTorch fp32"), get("student ONNX fp32"),
                         get("student ONNX opt"), get("student ONNX int8_dynamic"))
    lines.append(f"ONNX runtime (student ONNX fp32 vs student PyTorch fp32): {ratio(fp32, st)}")
    lines.append(f"fusions (opt vs fp32): {ratio(opt, fp32)}")
    lines.append(f"int8 kernels (int8_dynamic vs fp32, the graph it is quantized from): "
                 f"{ratio(i8, fp32)}; vs opt: {ratio(i8, opt)}")
    for name in ("teacher PyTorch fp32", best.name if best else None, "peer: " + PEER_NAME):
        if name:
            lines.append(f"padding (length-sorted vs input order), {name}: "
                         f"{ratio(get(name), get(name, 'input'))}")
    peer = get("peer: " + PEER_NAME)
    if best and peer:
        lines.append(f"best student ({best.name}) vs the peer: {ratio(best, peer)}")
    minilm = get("peer PyTorch fp32 (all-MiniLM-L6-v2)")
    if peer_params and student_params < peer_params:
        lines.append(f"smaller student ({student_params / 1e6:.1f}M vs MiniLM-L6 "
                     f"{peer_params / 1e6:.1f}M parameters), PyTorch fp32: {ratio(st, minilm)}")
    elif peer_params:
        lines.append(f"student size: {student_params / 1e6:.1f}M parameters, not smaller than "
                     f"MiniLM-L6 ({peer_params / 1e6:.1f}M): no gain from size")
    return lines


def goal_line(best: Row | None, teacher: Row, peer: Row | None) -> tuple[str, dict]:
    if best is None:
        return "goal: no student ONNX variant measured", {"met": False}
    ratio = best.sentences_per_s / teacher.sentences_per_s
    cos = best.parity["mean_cosine"] if best.parity else float("nan")
    ahead = peer is not None and best.sentences_per_s > peer.sentences_per_s
    goal = {"best_variant": best.name, "ratio_to_teacher": round(ratio, 2),
            "ratio_ok": ratio >= GOAL_RATIO, "mean_cosine": round(cos, 5),
            "parity_ok": cos >= GOAL_COSINE, "ahead_of_peer": ahead,
            "met": ratio >= GOAL_RATIO and cos >= GOAL_COSINE and ahead}
    text = (f"goal: {best.name} at {ratio:.1f}× the teacher (≥{GOAL_RATIO:.0f}×: "
            f"{'yes' if goal['ratio_ok'] else 'NO'}), "
            f"mean cos {cos:.4f} (≥{GOAL_COSINE}: {'yes' if goal['parity_ok'] else 'NO'}), "
            f"ahead of the peer: {'yes' if ahead else 'NO'} → "
            f"{'MET' if goal['met'] else 'not met'}")
    return text, goal
