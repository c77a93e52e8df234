"""Student models: timm backbone + dense decoder + projection into the teacher's embedding space (DESIGN §4)."""
from zss.models.decoders import ASPPDecoder, MLPDecoder, build_decoder, plan_levels
from zss.models.student import Student

__all__ = ["Student", "ASPPDecoder", "MLPDecoder", "build_decoder", "plan_levels"]
