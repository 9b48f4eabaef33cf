"""Optax transforms that turn stacked per-task gradients into one update."""

from multiret_jax.multitask.base import (METHODS, UnknownMethodError, build_method, get_method,
                                         naive, num_tasks, register_method, stacked_task_grads,
                                         weighted_sum)
from multiret_jax.multitask.cgd import CGDState, cgd
from multiret_jax.multitask.from_step import FromStepState, from_step
from multiret_jax.multitask.gradnorm import GradNormState, gradnorm
from multiret_jax.multitask.pcgrad import PCGradState, pcgrad
from multiret_jax.multitask.median import median_select
from multiret_jax.multitask.taco import TacoState, taco
from multiret_jax.multitask import analysis

__all__ = ["METHODS", "UnknownMethodError", "build_method", "get_method", "naive", "num_tasks",
           "register_method", "stacked_task_grads", "weighted_sum", "CGDState", "cgd", "FromStepState", "from_step", "GradNormState", "gradnorm",
           "PCGradState", "pcgrad", "TacoState", "median_select", "taco", "analysis"]
