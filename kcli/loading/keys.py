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
