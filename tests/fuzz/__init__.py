"""Fuzzing of every decoder that reads bytes a peer or a disk hands the node.

Each ``*_fuzz`` module holds the inputs (seed corpus and mutations, drawn from a ``random.Random``)
and one check per input; the ``test_*`` modules drive them through hypothesis with a small bound for
``make test``, and ``run.py`` loops them directly for the long ``make fuzz`` run.
"""
