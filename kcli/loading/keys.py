"""The one place that maps checkpoint keys to our module names.

Our modules are named after the diffusers checkpoint keys, so for current files every mapping is the
identity. Older conversions used the pre-0.14 attention names (``query/key/value/proj_attn``); diffusers
renames them when it loads, and so do we. Rules are ``(regex, replacement)`` pairs tried in order on each
key; the first match wins. ``assign_weights`` then checks that every module tensor was filled exactly once.
"""

LEGACY_ATTENTION = (
    (r"(\.attentions\.\d+)\.query\.", r"\1.to_q."),
    (r"(\.attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(\.attentions\.\d+)\.value\.", r"\1.to_v."),
    (r"(\.attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
)

UNET = LEGACY_ATTENTION
MOVQ = LEGACY_ATTENTION
PRIOR = ()

# Buffers that transformers versions before 4.31 saved with the weights and that today's models rebuild
# themselves (non-persistent): the public 2023 CLIP text/vision and M-CLIP files carry them. A checkpoint may
# hold these and nothing else that the module does not expect; they are checked for shape and dropped.
#   position_ids    int64 (1, max_positions): 0..n-1 (CLIP text 77, CLIP vision patches+1, XLM-R 514)
#   token_type_ids  int64 (1, max_positions): zeros (XLM-R embeddings, where a model has it)
LEFTOVER_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def is_leftover(key: str) -> bool:
    """True for a key that names one of LEFTOVER_BUFFERS (at any depth)."""
    return any(key == name or key.endswith("." + name) for name in LEFTOVER_BUFFERS)
