"""``kandinsky inpaint`` and ``kandinsky outpaint``: repaint part of a picture, or grow it."""

from __future__ import annotations

from kcli.cli.flags import Values, generating
from kcli.pipelines.requests import Inpaint, Outpaint


@generating("inpaint", Inpaint, size="the picture's", doc="Repaint the white part of a mask; the black part is "
            "kept exactly.")
def inpaint(values: Values) -> None:
    from kcli.cli.run import pick, run

    run(values, (Inpaint,), lambda text, s: pick(Inpaint, {**s, "prompt": text}), prompt=values["prompt"])


@generating("outpaint", Outpaint, size="from --expand", doc="Grow a picture beyond its borders; only the new "
            "area is painted.")
def outpaint(values: Values) -> None:
    from kcli.cli.run import pick, run

    run(values, (Outpaint,), lambda text, s: pick(Outpaint, {**s, "prompt": text}), prompt=values["prompt"])
