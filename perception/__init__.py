"""perception: vision encoders behind one interface (:class:`VisionEncoder`)."""

from perception.configs import VisionEncoderConfig, ViTEncoderConfig
from perception.encoder import VisionEncoder

__all__ = ["ViTEncoderConfig", "VisionEncoder", "VisionEncoderConfig"]
