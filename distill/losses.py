"""Distillation losses, one function each. Embeddings are L2-normalized on both sides.

embed: 1 − cosine to the teacher's embedding. On unit vectors this is MSE up to a constant
       (‖s − t‖² = 2 − 2·cos), so one loss covers both the MSE and the cosine recipe.
score: the student's softmax over in-batch items for each user matches the teacher's
       (KL divergence at a temperature): ranking knowledge, not just positions.
"""

from __future__ import annotations


def embed_loss(student, teacher):
    return (1 - (student * teacher).sum(-1)).mean()


def score_loss(student_users, student_items, teacher_users, teacher_items, temperature: float):
    import torch.nn.functional as F

    s = student_users @ student_items.T / temperature
    t = teacher_users @ teacher_items.T / temperature
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
