"""Student models: timm backbone + dense decoder + projection into the teacher's embedding space (docs/architecture.md
"Student")."""

from zss.models.chimera import ChimeraStudent, CLIPSemanticHead
from zss.models.clip_rc_decoder import RecoveryDecoder, RegionTextDecoder
from zss.models.decoders import ASPPDecoder, MLPDecoder, build_decoder, plan_levels
from zss.models.student import Student
from zss.models.synthesizer import WeightSynthesizer

__all__ = [
    "Student",
    "ASPPDecoder",
    "MLPDecoder",
    "build_decoder",
    "plan_levels",
    "ChimeraStudent",
    "CLIPSemanticHead",
    "RegionTextDecoder",
    "RecoveryDecoder",
    "WeightSynthesizer",
]
