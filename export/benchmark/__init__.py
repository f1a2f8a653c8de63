"""`towerlite bench encoders` (also `python -m towerlite.export.benchmark`): one run of the
teacher vs the student (PyTorch and every ONNX variant) vs the peer a user would reach for
today, on one list of held-out texts.

    texts.py     the held-out mixed texts every row encodes
    encoders.py  each row's encoder behind one batching loop, and how a row is timed
    peer.py      the peer: all-MiniLM-L6-v2 exported and quantized with optimum, run through it
    report.py    the rows, the machine, the markdown table, the attribution lines, the goal
    run.py       the run and its command line
"""
