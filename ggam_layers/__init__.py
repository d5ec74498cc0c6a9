"""ggam-layers: Grad-CAM guided channel-spatial attention (GGAM) for timm.

Xu, Chang, Xie, Ma, "Grad-CAM guided channel-spatial attention module for fine-grained visual classification",
arXiv 2101.09666.
"""
__version__ = '0.1.0'

from . import registry  # noqa: F401  (registers the ggam_* entrypoints with timm)
from .attention import AttentionResult, ChannelSpatialAttention
from .gradcam import GradCamWeights, grad_cam_weights
from .head import GGAMHead, GGAMOutput, closed_form_cam_weights
from .loss import GGAMLoss, GGAMLossTerms, cam_log_target, ggam_divergence, ggam_loss
from .model import FeatureLayout, GGAMModel, UnsupportedBackboneError, head_param_groups, wrap_timm_model
from .spatial_guidance import SpatialGuidanceLoss, gradcam_position_target

__all__ = [
    'AttentionResult', 'ChannelSpatialAttention', 'FeatureLayout', 'GGAMHead', 'GGAMLoss', 'GGAMLossTerms',
    'GGAMModel', 'GGAMOutput', 'GradCamWeights', 'SpatialGuidanceLoss', 'UnsupportedBackboneError', 'cam_log_target',
    'closed_form_cam_weights', 'ggam_divergence', 'ggam_loss', 'grad_cam_weights', 'gradcam_position_target',
    'head_param_groups', 'wrap_timm_model', '__version__',
]
