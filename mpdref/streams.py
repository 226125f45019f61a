"""The named random streams of one seed: the one table of which draw comes from where.

Every random draw in mpdref comes from a generator that one seed determines. Each use
has a stream of its own, so that adding draws to one (a longer schedule, another layer
to mask) leaves every other use's draws unchanged:

    stream          key         drawn from it
    init, dropout   spawn(2)    a network's initial weights and its dropout masks (mpdref.models)
    shuffle         (1, stage)  a run's stage shuffles the training set each epoch (mpdref.runner)
    mpd             (2, stage)  the permutations of an mpd stage's masks
    quantize        (3, stage)  a quantize stage's k-means starts (init = "random")
    fit             (7,)        `mpdref.train.fit`'s shuffling when the caller gives none

The keys are numpy SeedSequence spawn keys: ``SeedSequence(seed, spawn_key=key)``. They
are part of what makes a run reproducible bit for bit, so they never change.
"""
from __future__ import annotations

import numpy as np

STREAMS = {"shuffle": 1, "mpd": 2, "quantize": 3, "fit": 7}


def random_stream(seed: int, name: str, *index: int) -> np.random.Generator:
    """The generator of stream `name` (a key of STREAMS) for `seed`; `index`: the stage's position in
    its run, for the streams that are drawn once per stage."""
    if name not in STREAMS:
        raise ValueError(f"unknown random stream {name!r}; the streams are {', '.join(STREAMS)}")
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(STREAMS[name], *index)))
