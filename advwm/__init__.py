"""advwm: adversarial watermarks that make face-editing GANs produce broken fakes (CMUA-Watermark, CDMAA)."""

__version__ = "0.1.0"
