"""The pipeline stages, one module per method family, each registered in `mpdref.runner.registry`.

    train.py      train, teacher, evaluate (the reference core; recipes and distillation settings)
    mpd.py        mpd: MPDCompress masks (mpdref.mpd)
    prune.py      prune, sensitivity (mpdref.prune)
    darb.py       darb: regular masks (mpdref.darb)
    admm.py       admm_prune, admm_quantize: ADMM's constrained training (mpdref.admm)
    quantize.py   quantize: codebooks and their fine-tuning (mpdref.quantize)
    encode.py     encode: the .mpdz file (mpdref.compress)

A stage turns its settings into calls of its method and reports the result; the math is
in the method's module. Importing this package registers every stage, in the order
above (the order `mpdref run --stages` lists them in).
"""
# isort: off
from mpdref.runner.stages import train  # noqa: F401  (each import registers its module's stages)
from mpdref.runner.stages import mpd  # noqa: F401
from mpdref.runner.stages import prune  # noqa: F401
from mpdref.runner.stages import darb  # noqa: F401
from mpdref.runner.stages import admm  # noqa: F401
from mpdref.runner.stages import quantize  # noqa: F401
from mpdref.runner.stages import encode  # noqa: F401
