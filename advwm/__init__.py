"""advwm: adversarial watermarks that make face-editing GANs produce broken fakes (CMUA-Watermark, CDMAA)."""

__version__ = "0.1.0"

from advwm.project import register_resolvers  # noqa: E402  (configs use ${advwm.root:} and ${advwm.run_group:...})

register_resolvers()
