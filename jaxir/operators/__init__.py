"""Forward operators: one pytree interface (A, AT, pinv, SVD form), one image per call.

Also the shared input checks (`check_in_shape`, `check_image`) and blur kernels.
Layer: imports only `jaxir.errors` and `jaxir.checks`; solvers and `jaxir.tasks`
build on it.
"""
from jaxir.operators import blind
from jaxir.operators.base import (LinearOperator, Operator, SVDOperator, adjoint_error, cg,
                                  check_image, check_in_shape, safe_abs)
from jaxir.operators.blur import Blur, CircularBlur, gaussian_blur, motion_blur
from jaxir.operators.kernels import (gaussian_kernel, kernel_from_logits, kernel_to_logits,
                                     motion_kernel, motion_trajectory, trajectory_kernel,
                                     validate_kernel)
from jaxir.operators.color import DDRM_GRAY_WEIGHTS, Colorization
from jaxir.operators.denoise import Identity
from jaxir.operators.inpaint import Inpaint, box_mask, random_mask
from jaxir.operators.matrix import MatrixOperator, matrix_operator
from jaxir.operators.blind import BlindBlur, BlindDenoise, BlindSR, NonBlind
from jaxir.operators.noise import bird_noise, gaussian_noise, poisson_noise
from jaxir.operators.phase_retrieval import PhaseRetrieval
from jaxir.operators.separable import SeparableBlur, deblur_aniso, deblur_gauss, deblur_uni
from jaxir.operators.superres import AvgPoolSR, BicubicSR, resizer_matrix
from jaxir.operators.walsh_hadamard import WalshHadamardCS, walsh_hadamard_cs

__all__ = ["Operator", "LinearOperator", "SVDOperator", "adjoint_error", "cg",
           "check_in_shape", "check_image", "safe_abs",
           "blind", "BlindBlur", "BlindSR", "BlindDenoise", "NonBlind", "bird_noise",
           "Blur", "CircularBlur", "gaussian_blur", "motion_blur", "PhaseRetrieval",
           "gaussian_kernel", "motion_kernel", "motion_trajectory", "trajectory_kernel",
           "kernel_from_logits", "kernel_to_logits", "validate_kernel",
           "gaussian_noise", "poisson_noise", "Identity", "Inpaint", "box_mask", "random_mask",
           "Colorization", "DDRM_GRAY_WEIGHTS", "BicubicSR", "AvgPoolSR", "resizer_matrix",
           "SeparableBlur", "deblur_gauss", "deblur_uni", "deblur_aniso", "WalshHadamardCS",
           "walsh_hadamard_cs", "MatrixOperator", "matrix_operator"]
