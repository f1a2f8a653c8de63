"""Distillation losses, one function each. Embeddings are L2-normalized on both sides.

embed: 1 − cosine to the teacher's embedding. On unit vectors this is MSE up to a constant
       (‖s − t‖² = 2 − 2·cos), so one loss covers both the MSE and the cosine recipe.
score: the student's softmax over in-batch items for each user matches the teacher's
       (KL divergence at a temperature): ranking knowledge, not just positions.
info_nce: fine-tuning on interactions: each user's next item against the other users' items
       in the batch (logQ-corrected) and, optionally, a bank of catalog items; symmetric adds
       each item against the batch's users.
"""

from __future__ import annotations


def embed_loss(student, teacher):
    return (1 - (student * teacher).sum(-1)).mean()


def score_loss(student_users, student_items, teacher_users, teacher_items, temperature: float):
    import torch.nn.functional as F

    student = student_users @ student_items.T / temperature
    teacher = teacher_users @ teacher_items.T / temperature
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                    reduction="batchmean")


def info_nce(users, items, temperature: float, valid, log_q=None, bank=None, bank_valid=None,
             symmetric: bool = True):
    """users, items: (B, d) with items[i] user i's positive. valid: (B, B) bool, True where
    item j is a fair negative for user i (the diagonal is forced on). log_q: (B,) logQ of the
    in-batch items, subtracted from their logits (they were sampled by popularity). bank:
    (M, d) more negatives without gradient (a uniform draw of the catalog), bank_valid (B, M)."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(len(users), dtype=torch.bool)
    valid = torch.as_tensor(valid) | eye
    logits = users @ items.T / temperature
    if log_q is not None:
        logits = logits - torch.as_tensor(log_q)[None, :]
    u2i = logits.masked_fill(~valid, float("-inf"))
    if bank is not None and len(bank):
        extra = (users @ bank.T / temperature).masked_fill(~torch.as_tensor(bank_valid),
                                                           float("-inf"))

        u2i = torch.cat([u2i, extra], dim=1)
    target = torch.arange(len(users))
    loss = F.cross_entropy(u2i, target)
    if symmetric:  # each item against the batch's users (no popularity skew among users)
        i2u = (items @ users.T / temperature).masked_fill(~valid.T, float("-inf"))
        loss = 0.5 * (loss + F.cross_entropy(i2u, target))
    return loss
