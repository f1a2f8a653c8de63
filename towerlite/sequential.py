"""The history user tower: a user's liked items (catalog rows, oldest → newest) → a user vector
scored by dot product against an item table. One model, three settings of it:

    text + ID   item vector = adapter(text embedding) + a learned ID vector for warm items
                (cold items — fewer than `id_min_likes` training likes — keep text alone)
    text only   the adapter alone: every item, warm or cold, by its text
    ID only     learned ID vectors alone: SASRec (Kang & McAuley 2018), the yardstick

The adapter is UniSRec's idea (Hou et al. 2022) kept small: the item tower's embeddings
PCA-whitened once (a fixed buffer: the text model's cosines crowd into a narrow cone), then a
learned linear map into the tower's width. The sequence model is SASRec's: learned positions
(counted back from the newest item, so any history length reads alike), pre-norm causal
self-attention blocks, the last position's state is the user vector. Training is SASRec+'s
(Klenitskiy & Vasilev 2023): cross-entropy over the whole catalog at every position, or, for
large catalogs, over the batch's targets and a shared uniform sample of `negatives` items (no
logQ term: the uniform part needs none, the in-batch part is not corrected; each step then
computes the item vectors of its batch's and its sample's rows alone). Training lives in
towerlite.sequential_train.

With `text_skip` the item table is wider: each row also carries the item's own normalized text
embedding times a scale (learned, or fixed by `skip_gain`), and the user vector the mean of its
history's rows there, so the score adds the zero-shot text similarity of the history to the item
(meant for Book-Crossing, where a 64-d adapter trained on popular targets loses it; neither
scale carried it through training there: docs/quality.md).

The same item table is the input lookup and the scoring matrix, as in SASRec. A served catalog
holds `item_table(...)` of it; the ONNX graph holds only the sequence model (item vectors in,
user vector out), so a new item needs only its text embedding to be recommended at once.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from .files import replace_dir

log = logging.getLogger(__name__)

PAD = -1  # a history row that is not an item (left padding)
LR_SCHEDULES = ("constant", "cosine")  # HistoryConfig.lr_schedule
PRECISIONS = ("fp32", "bf16")  # HistoryConfig.precision


@dataclass
class HistoryConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    # items read per history (the newest ones): 200 over 50 raised MovieLens Recall@10 from
    # 0.240 to 0.260 at 20 epochs (docs/quality.md), at 1.4x the time an epoch
    max_len: int = 200
    dropout: float = 0.2
    use_text: bool = True
    use_ids: bool = True
    id_min_likes: int = 3  # an item needs this many training likes to get an ID vector
    # 20 → 30: 0.260 → 0.278 (docs/quality.md); ≈ 35 min on 2 cores. 45 still gains (0.261 →
    # 0.272 on one run's validation-kept epochs, not separated) but is past the 45-minute budget
    # in fp32; with precision=bf16 it fits. Past 45 the validation stops rising (epochs 46–54
    # never above 44's; docs/quality.md, 2026-12-03)
    epochs: int = 30
    batch_size: int = 64  # windows of 200 a step (12,800 positions, as 256 windows of 50 were)
    lr: float = 2e-3
    # "constant", or "cosine": lr·½(1 + cos(π·progress)) over the run's steps, 0 at its end.
    # Constant by measurement: at 30 epochs cosine cost MovieLens 0.2757 → 0.2432 Recall@10
    # (SASRec 0.2649 → 0.2486), both under-trained at this budget; lr 4e-3 no better
    # (0.2739; docs/quality.md)
    lr_schedule: str = "constant"
    # "bf16": each training step's forward under CPU autocast to bfloat16 (matrix products in
    # bf16, softmax and loss in fp32; weights, optimizer state, validation and the saved tower
    # stay fp32). On a CPU with AVX512-BF16 a MovieLens step took 0.76× fp32's (360 against
    # 473 ms) and 45 epochs ranked as fp32's (0.2703 against 0.2721, paired [0, +0.007];
    # docs/quality.md, 2026-12-03). Without native bf16 it is emulated (slower): not the default
    precision: str = "fp32"
    weight_decay: float = 0.0
    negatives: int = 0  # 0: full softmax over the catalog; else this many shared uniform samples
    # the item's normalized text embedding appended to its row (scaled, learned) and the
    # history's mean of them to the user vector: the table is dim + text width wide
    text_skip: bool = False
    # 0: the skip's scale is learned; > 0: fixed, a score gain of skip_gain per unit of cosine
    # (a learned scale fell to 1.6 on Book-Crossing, whose evaluated targets are colder than
    # its training targets: docs/quality.md)
    skip_gain: float = 0.0
    # τ of logit adjustment (Menon et al. 2021): training logits + τ·log(an item's share of the
    # training likes, +1 smoothed), served scores without it, so the tower learns what the
    # history says beyond an item's popularity (Book-Crossing's evaluated targets are colder
    # than its training targets: docs/quality.md)
    logit_adjust: float = 0.0
    # share of the warm items scored as cold (text alone) at each training step, as DropoutNet
    # (Volkovs et al. 2017) trains for cold start: the user vector must also match text rows
    id_dropout: float = 0.0
    # share of the training users (with 2+ likes) whose last like is held back from training
    # (split_validation) and ranked after every epoch and before the first: the epoch with the
    # best validation Recall@10 is the one kept (towerlite.evaluation.sequential.validation
    # builds the split and the ranking). 0: no validation, the last epoch is kept
    validation: float = 0.0
    patience: int = 0  # with validation: stop after this many epochs with no better one (0: never)
    # with validation: an epoch is kept only where its cold validation targets (the eval's
    # cold-start slice: 2 or fewer training likes) score at least the untrained tower's Recall@10
    # — the goal that training not cost cold items their text match, made a selection rule
    cold_floor: bool = False
    # with validation: the chosen users held back whole (none of their likes trained on, as the
    # eval's held-out users), not only their last like (on Book-Crossing it kept the setting a
    # last-like split keeps, and its cold targets disagree with the held-out users' as much:
    # docs/quality.md)
    validation_users: bool = False
    # batch windows of like length together (see `batches`): for mixed short and long histories
    bucket_by_length: bool = False
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> HistoryConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def resume_key(self) -> dict:
        """The settings the weights after any epoch depend on, which a checkpoint must match to
        be resumed: not `patience` (when a run stops), nor `epochs` under a constant rate (a run
        of 30 epochs is then the first 30 of a run of 60), so a finished run rerun with more
        epochs trains on from its last one. Under a cosine schedule every step's rate depends
        on the run's length, so `epochs` stays in."""
        key = asdict(self)
        key.pop("patience")
        if self.lr_schedule == "constant":
            key.pop("epochs")
        return key

    @property
    def kind(self) -> str:
        kind = {(True, True): "text + ID", (True, False): "text only",
                (False, True): "ID only (SASRec)"}[self.use_text, self.use_ids]
        return kind + (" + text skip" if self.text_skip and self.use_text else "")


# the text skip's scale starts here (a score gain of SKIP_SCALE² per unit of cosine): the
# diagnostic in docs/quality.md found the zero-shot similarity useful at weights of 10–30
SKIP_SCALE = 3.0


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row at length 1 (a zero row stays zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def whitening(text: np.ndarray, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """(mean, matrix): x ↦ (x − mean) @ matrix has identity covariance over the catalog."""
    mean = text.mean(0)
    cov = np.cov((text - mean).T.astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    return mean.astype(np.float32), (vecs / np.sqrt(np.maximum(vals, 0) + eps)).astype(np.float32)


def _torch():
    import torch

    return torch


def sampled(cfg: HistoryConfig, n_items: int) -> bool:
    """Whether training samples its negatives (else: the full softmax over the catalog)."""
    return 0 < cfg.negatives < n_items


def build_model(cfg: HistoryConfig, n_items: int, text: np.ndarray | None, warm: np.ndarray):
    """The torch module; `text` (n_items, text_dim) the item tower's embeddings (None when
    use_text is off), `warm` (n_items,) bool: items that get an ID vector."""
    torch = _torch()
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
            self.qkv, self.out = nn.Linear(cfg.dim, 3 * cfg.dim), nn.Linear(cfg.dim, cfg.dim)
            self.ff = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                    nn.Linear(cfg.dim, cfg.dim))
            self.drop = nn.Dropout(cfg.dropout)

        def forward(self, x, allowed, last=False):  # allowed: (batch, 1, length, length) bool
            """The block's states at every position, or (`last`) at the newest one only:
            every position is still read (keys and values), one query is asked."""
            batch, length, dim = x.shape
            heads = cfg.heads
            qkv = self.qkv(self.norm1(x)).view(batch, length, 3, heads, dim // heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            if last:
                q, allowed, x = q[:, :, -1:], allowed[:, :, -1:], x[:, -1:]
            att = (q @ k.transpose(-1, -2)) / math.sqrt(dim // heads)
            att = att.masked_fill(~allowed, -1e9).softmax(-1)
            x = x + self.drop(self.out((att @ v).transpose(1, 2).reshape(batch, -1, dim)))
            return x + self.drop(self.ff(self.norm2(x)))

    class SequenceEncoder(nn.Module):
        """Item vectors (B, L, width) and a mask (B, L) of real items → user vectors (B, width),
        width = dim, + the text width with `text_skip` (`SavedTower.width`). This is what the
        ONNX graph holds."""

        def __init__(self):
            super().__init__()
            self.pos = nn.Embedding(cfg.max_len, cfg.dim)
            self.blocks = nn.ModuleList(Block() for _ in range(cfg.layers))
            self.norm = nn.LayerNorm(cfg.dim)
            if cfg.text_skip and cfg.skip_gain:
                # the learned part starts at zero, so the untrained tower ranks by the fixed skip
                # alone — the history's mean text similarity — and training (with validation,
                # the epoch kept) moves from there
                nn.init.zeros_(self.norm.weight)
            self.drop = nn.Dropout(cfg.dropout)

        def states(self, vectors, mask, last=False):
            """(B, L, width) states at every position; `last`: (B, 1, width), the newest
            position's alone (the last block asks one query, not L)."""
            skip = vectors[..., cfg.dim:]  # empty unless text_skip
            vectors = vectors[..., :cfg.dim]
            # positions from the mask's own shape (a traced arange froze the length in ONNX)
            position = torch.ones_like(mask[0]).cumsum(0) - 1
            back = position.flip(0).long()  # the newest item is position 0
            x = self.drop(vectors * math.sqrt(cfg.dim) + self.pos(back)) * mask.unsqueeze(-1)
            # a position reads itself and earlier real items: a padded position reads only
            # itself, so no row of the softmax is empty (comparisons, not tril/eye: onnxruntime
            # has no boolean EyeLike)
            allowed = ((position.unsqueeze(1) >= position.unsqueeze(0)) & (mask > 0).unsqueeze(1)) \
                | (position.unsqueeze(1) == position.unsqueeze(0))
            for i, block in enumerate(self.blocks):
                x = block(x, allowed.unsqueeze(1), last and i == len(self.blocks) - 1)
            x = self.norm(x[:, -1:] if last else x)  # (already one position after a block)
            if cfg.text_skip:  # each position: the mean of the skip rows read so far
                seen = mask.unsqueeze(-1)
                mean = (skip * seen).cumsum(1) / seen.cumsum(1).clamp(min=1)
                x = torch.cat([x, mean[:, -1:] if last else mean], -1)
            return x

        def forward(self, vectors, mask):
            # a user vector is the newest position's state: inference (user_vectors, the ONNX
            # graph) runs the last block for that position alone
            return self.states(vectors, mask, last=True)[:, -1]

    class HistoryTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = SequenceEncoder()
            self.register_buffer("warm", torch.as_tensor(np.asarray(warm, bool)))
            if cfg.use_text:
                mean, white = whitening(text)
                # scaled to unit norm on average, so text and ID vectors start at one scale
                # (unscaled, the first epoch's loss started above log(catalog size))
                white = white / np.float32(math.sqrt(text.shape[1]))
                self.register_buffer("text_white", torch.as_tensor((text - mean) @ white))
                self.adapter = nn.Linear(text.shape[1], cfg.dim)
                self.whitening = (mean, white)
                if cfg.text_skip:
                    unit = unit_rows(text)
                    self.register_buffer("text_unit", torch.as_tensor(unit.astype(np.float32)))
                    if not cfg.skip_gain:
                        self.skip_log_scale = nn.Parameter(torch.zeros(()))
            if cfg.use_ids:
                # sparse gradients with a sampled softmax: a step touches few rows (Optimizers)
                self.ids = nn.Embedding(n_items, cfg.dim, sparse=sampled(cfg, n_items))
                nn.init.normal_(self.ids.weight, std=cfg.dim ** -0.5)

        def item_table(self, rows=None):
            """The item vectors of catalog `rows` (sorted; None: every item). A sampled
            softmax needs only its batch's and its sample's rows (Optimizers has the step
            times over Book-Crossing's 271k books)."""
            def pick(x):
                return x if rows is None else x[rows]

            table = 0
            if cfg.use_text:
                table = self.adapter(pick(self.text_white))
            if cfg.use_ids:
                warm = pick(self.warm)
                if self.training and cfg.id_dropout and cfg.use_text:
                    warm = warm & (torch.rand(warm.shape) >= cfg.id_dropout)
                ids = self.ids.weight if rows is None else self.ids(rows)
                table = table + ids * warm.unsqueeze(-1)
            if cfg.text_skip and cfg.use_text:
                table = torch.cat([table, self.skip_scale() * pick(self.text_unit)], -1)
            return table

        def skip_scale(self):
            if cfg.skip_gain:
                return math.sqrt(cfg.skip_gain)  # user and item rows both carry it
            return SKIP_SCALE * self.skip_log_scale.exp()

        def forward(self, rows, needed=None):
            """(B, L) catalog rows, PAD on the left → ((B, L, dim) states, the item table over
            `needed`: sorted catalog rows holding every row of `rows`; None: the whole one)."""
            mask = rows >= 0
            table = self.item_table(needed)
            lookup = rows.clamp(min=0)
            if needed is not None:
                lookup = torch.searchsorted(needed, lookup).clamp(max=len(needed) - 1)
            return self.encoder.states(table[lookup], mask.float()), table

    return HistoryTower()


def history_rows(histories: list[list[int]], max_len: int) -> np.ndarray:
    """The newest max_len rows of each history, left-padded with PAD: (users, width), width the
    longest history read (at most max_len)."""
    width = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = np.full((len(histories), width), PAD, np.int64)
    for r, h in enumerate(histories):
        h = list(h)[-width:]
        if h:
            out[r, width - len(h):] = h
    return out


WEIGHTS_FILE = "weights.pt"
# recomputed when a tower is built (from the item tower's vectors and the likes counted)
DERIVED = ("warm", "text_white", "text_unit")


def trained_state(model) -> dict:
    """The model's state without the derived buffers: what checkpoints and weights.pt hold
    (the whitened and unit text vectors alone would be the catalog's size × the text width
    twice: 830 MB for Book-Crossing's 271k books)."""
    return {k: v for k, v in model.state_dict().items() if k not in DERIVED}


def load_weights(model, path: Path) -> None:
    """A saved tower's trained weights into `model` (built for the same catalog and settings;
    its `warm` items may be more: an item newly warm starts from its initial ID vector)."""
    load_trained(model, _torch().load(path, weights_only=True), path)


def load_trained(model, state: dict, source) -> None:
    """`trained_state` of a model with the same settings and catalog into `model`."""
    from .errors import TowerliteError

    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if k not in DERIVED] + list(unexpected)
    if wrong:
        raise TowerliteError(f"{source} does not fit this tower (settings or catalog differ): "
                             f"{', '.join(wrong[:5])}")


def user_vectors(model, histories: list[list[int]], max_len: int, batch: int = 512,
                 table: np.ndarray | None = None) -> np.ndarray:
    """(users, dim) float32 user vectors from the model in torch, newest max_len items read.
    `table`: the model's item_table, where the caller has it already."""
    torch = _torch()
    out = []
    with torch.no_grad():
        # once for all batches: it is the same for every user
        table = model.item_table() if table is None else torch.as_tensor(table)
        for a in range(0, len(histories), batch):
            rows = torch.as_tensor(history_rows(histories[a:a + batch], max_len))
            mask = (rows >= 0).float()
            out.append(model.encoder(table[rows.clamp(min=0)], mask).numpy())
    return np.concatenate(out).astype(np.float32) if out else \
        np.zeros((0, table.shape[1]), np.float32)


def item_table(model) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        return model.item_table().numpy().astype(np.float32)


ONNX_FILE = "history_encoder.onnx"
# training users' histories saved with a tower: the queries `towerlite deploy` checks a history
# index with. A user vector of one item is not a trained user's: at nprobe 128 over the full
# catalog one-item histories read recall@10 0.791 where the held-out users read 0.983
PROBES_FILE = "probe_histories.json"


def probe_histories(sequences: list[list[int]], item_ids: list[str], max_len: int,
                    count: int = 200, seed: int = 0) -> list[list[str]]:
    """`count` seeded training histories, each its newest max_len items (ids), oldest first."""
    pool = [s for s in sequences if s]
    chosen = np.random.default_rng([seed, 2]).choice(len(pool), size=min(count, len(pool)),
                                                     replace=False)
    return [[item_ids[r] for r in pool[i][-max_len:]] for i in sorted(chosen.tolist())]


def export_graph(encoder, max_len: int, width: int, path: Path) -> None:
    """The sequence model (the tower's `encoder`) as ONNX: item_vectors (B, L, width) + mask
    (B, L) → user_vector (B, width), batch and length dynamic."""
    torch = _torch()
    example = (torch.zeros(2, max_len, width), torch.ones(2, max_len))
    with warnings.catch_warnings():
        # the tracer warns about unpacking q, k, v (always three) and the constant 1/sqrt(d):
        # both are fixed by design; batch and length stay dynamic (tests run 1…256 × 1…max_len)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(encoder.eval(), example, path,
                          input_names=["item_vectors", "mask"], output_names=["user_vector"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"item_vectors": {0: "batch", 1: "length"},
                                        "mask": {0: "batch", 1: "length"},
                                        "user_vector": {0: "batch"}})


def save(folder: Path, model, cfg: HistoryConfig, item_ids: list[str], item_model: str,
         report: dict, probes: list[list[str]] | None = None) -> Path:
    """A tower folder: history_encoder.onnx (item vectors (B, L, width) + mask (B, L) → user
    vector), weights.pt (the torch weights, to fine-tune from), adapter.npz (whitening mean
    and matrix, linear weight and bias; text settings), id_vectors.npy + id_items.json (warm
    items' ID vectors, by item id), item_ids.json (the training catalog), config.json,
    history_report.json, and with `probes` (probe_histories) PROBES_FILE. Written into a
    staging folder and moved into place whole."""
    import shutil

    torch = _torch()
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    export_graph(model.encoder, cfg.max_len, model.item_table().shape[1], staging / ONNX_FILE)
    with torch.no_grad():
        if cfg.use_text:
            mean, white = model.whitening
            skip = {"skip_scale": np.float32(float(model.skip_scale()))} if cfg.text_skip else {}
            np.savez(staging / "adapter.npz", mean=mean, white=white,
                     weight=model.adapter.weight.numpy(), bias=model.adapter.bias.numpy(), **skip)
        if cfg.use_ids:
            warm = model.warm.numpy()
            np.save(staging / "id_vectors.npy", model.ids.weight.numpy()[warm].astype(np.float32))
            warm_ids = [item for item, is_warm in zip(item_ids, warm) if is_warm]
            (staging / "id_items.json").write_text(json.dumps(warm_ids))

        # the trained weights, for `towerlite fold-in` to continue from
        torch.save(trained_state(model), staging / WEIGHTS_FILE)
    (staging / "item_ids.json").write_text(json.dumps(list(item_ids)))
    (staging / "config.json").write_text(json.dumps({**asdict(cfg), "item_model": item_model},
                                                    indent=2))
    (staging / "history_report.json").write_text(json.dumps(report, indent=2))
    if probes:
        (staging / PROBES_FILE).write_text(json.dumps(probes))
    return replace_dir(staging, folder)


@dataclass
class SavedTower:
    """A saved tower folder, read with numpy and onnxruntime only."""

    folder: Path
    config: HistoryConfig
    item_model: str

    @classmethod
    def load(cls, folder: str | Path) -> SavedTower:
        from .errors import TowerliteError

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / ONNX_FILE).is_file():
            raise TowerliteError(f"{folder} is not a history tower folder (no config.json and "
                                 f"{ONNX_FILE}; `towerlite history` writes one)")
        data = json.loads((folder / "config.json").read_text())
        return cls(folder, HistoryConfig.from_dict(data), data.get("item_model", ""))

    @property
    def width(self) -> int:
        """The item table's and the user vector's width: dim, plus the text width with
        text_skip."""
        if not (self.config.text_skip and self.config.use_text):
            return self.config.dim
        return self.config.dim + int(np.load(self.folder / "adapter.npz")["mean"].shape[-1])

    def item_table(self, item_ids: list[str], text: np.ndarray | None) -> np.ndarray:
        """The scoring / lookup table for a catalog: (n, width) float32. `text`: the item
        tower's embeddings of these items (the tower's own item model), needed with text."""
        cfg = self.config
        table = np.zeros((len(item_ids), cfg.dim), np.float32)
        if cfg.use_text:
            if text is None:
                raise ValueError("this history tower reads item text: give the item embeddings")
            a = np.load(self.folder / "adapter.npz")
            table += ((text - a["mean"]) @ a["white"]) @ a["weight"].T + a["bias"]
        if cfg.use_ids:
            known = json.loads((self.folder / "id_items.json").read_text())
            vectors = np.load(self.folder / "id_vectors.npy")
            where = {item: r for r, item in enumerate(known)}
            rows = [(r, where[i]) for r, i in enumerate(item_ids) if i in where]
            if rows:
                dst, src = map(list, zip(*rows))
                table[dst] += vectors[src]
        if cfg.text_skip and cfg.use_text:
            unit = unit_rows(text)
            table = np.concatenate([table, a["skip_scale"] * unit], axis=1)
        return table.astype(np.float32)

    def probes(self) -> list[list[str]]:
        """The training histories saved with the tower (ids), [] for a tower saved without."""
        path = self.folder / PROBES_FILE
        return json.loads(path.read_text()) if path.is_file() else []

    def session(self, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(self.folder / ONNX_FILE), opts,
                                    providers=["CPUExecutionProvider"])


def onnx_user_vectors(session, table: np.ndarray, histories: list[list[int]], max_len: int,
                      batch: int = 256) -> np.ndarray:
    """User vectors through the ONNX graph: the numpy gather the served model does."""
    out = []
    for a in range(0, len(histories), batch):
        rows = history_rows(histories[a:a + batch], max_len)
        mask = (rows >= 0).astype(np.float32)
        vectors = table[np.maximum(rows, 0)] * mask[..., None]
        out.append(session.run(None, {"item_vectors": vectors.astype(np.float32), "mask": mask})[0])
    return np.concatenate(out) if out else np.zeros((0, table.shape[1]), np.float32)
