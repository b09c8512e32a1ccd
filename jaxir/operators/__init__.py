"""Forward operators: one pytree interface (A, AT, pinv, SVD form), one image per call."""
from jaxir.operators.base import LinearOperator, Operator, SVDOperator, adjoint_error, cg

__all__ = ["Operator", "LinearOperator", "SVDOperator", "adjoint_error", "cg"]
