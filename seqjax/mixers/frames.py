"""What the convolutional (frame) mixers share: the frame layout, its checks, and a 2-D convolution.

A frame mixer reads each position of ``x: (b, l, d)`` as one frame of
``frame_height × frame_width`` pixels with ``U = d / (H·W)`` channels
(row-major ``(H, W, U)``), or takes ``(b, l, H, W, U)`` frames directly (then
its output is 5-D too; ``step`` likewise takes ``(b, d)`` or ``(b, H, W,
U)``). :class:`FrameMixer` (not registered) holds the two fields, their
construction checks, the width rule and the frame-shaped entry points;
``convs5`` (``seqjax/mixers/convs5.py``) and ``convlstm``
(``seqjax/mixers/convlstm.py``) build on it. Moved here from ``convs5.py`` so
the two families share it without importing each other's private helpers.
"""

import jax

from seqjax.errors import ConfigError
from seqjax.mixers.base import Mixer
from seqjax.mixers.common import check_int
from seqjax.ops.common import accum_dtype
from seqjax.types import SegmentIds, Seq, SeqStep


def conv2d(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
    """A 2-D "same" convolution (cross-correlation, as ``lax.conv``) in the compute dtype.

    Args:
      x: ``(n, height, width, c_in)`` real.
      kernel: ``(k, k, c_in, c_out)`` real (HWIO), ``k`` odd.
      dtype: compute dtype of the operands; accumulated in float32 at least.

    Returns:
      ``(n, height, width, c_out)`` in ``accum_dtype(dtype)``.
    """
    return jax.lax.conv_general_dilated(
        x.astype(dtype), kernel.astype(dtype), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        preferred_element_type=accum_dtype(dtype))


def check_odd_kernel(name: str, field: str, value) -> None:
    """Raises ConfigError unless ``value`` is an odd int >= 1 (a symmetric "same" padding)."""
    check_int(name, field, value)
    if value % 2 == 0:
        raise ConfigError(f"{name}.{field}={value!r} must be odd (symmetric 'same' padding)")


class FrameMixer(Mixer):
    """Base of the mixers whose positions are frames (not registered).

    Subclasses set ``width_param`` to a parameter whose axis has ``U`` entries
    (``width()`` multiplies it by the frame size) and call
    :meth:`check_frame_fields` from their ``check_fields``.

    Attributes:
      frame_height: frame height ``H`` (named so: ``width`` is the Mixer's
        method that returns ``d``).
      frame_width: frame width ``W``.
    """

    frame_height: int = 1
    frame_width: int = 1

    @property
    def pixels(self) -> int:
        """``frame_height · frame_width``."""
        return self.frame_height * self.frame_width

    def check_frame_fields(self) -> None:
        """ConfigError for a bad ``frame_height``/``frame_width``, or a ``d_model`` the frame does not divide."""
        name = self.mixer_name
        check_int(name, "frame_height", self.frame_height)
        check_int(name, "frame_width", self.frame_width)
        if self.d_model is not None and self.d_model % self.pixels:
            raise ConfigError(f"{name}.d_model={self.d_model!r} must be a multiple of frame_height·frame_width="
                              f"{self.pixels}")

    def width(self, x: jax.Array | None = None) -> int:
        """The model width ``d``: from ``x``, else ``d_model``, else ``pixels · U`` (from ``width_param``)."""
        if x is None and self.d_model is None:
            return self.pixels * super().width()
        return super().width(x)

    def _channels(self, d: int) -> int:
        """``U = d / (H·W)``; ValueError when the frame does not divide ``d``."""
        if d % self.pixels:
            raise ValueError(f"{self.mixer_name}: width {d} is not a multiple of frame_height·frame_width="
                             f"{self.frame_height}·{self.frame_width}")
        return d // self.pixels

    def _frames(self, x: jax.Array) -> jax.Array:
        """``(..., d)`` as ``(n, H, W, U)`` frames."""
        return x.reshape((-1, self.frame_height, self.frame_width, x.shape[-1] // self.pixels))

    def _check_frame(self, x: jax.Array, lead: int, what: str) -> None:
        if x.shape[lead:lead + 2] != (self.frame_height, self.frame_width):
            raise ValueError(f"{self.mixer_name}{what}: x has shape {x.shape}; expected frames of "
                             f"(frame_height, frame_width) = ({self.frame_height}, {self.frame_width})")

    # --- frame-shaped inputs: (b, l, H, W, U) in, the same shape out --------------------

    def __call__(self, x: Seq, *, segment_ids: SegmentIds | None = None, deterministic: bool = True,
                 **kwargs) -> Seq:
        """Runs the layer over ``(b, l, d)`` or ``(b, l, H, W, U)`` frames (the output has the input's shape).

        Args:
          x: ``(batch, length, d_model)`` or ``(batch, length, H, W, U)``.
          segment_ids: optional ``(batch, length)`` ids of packed sequences.
          deterministic: unused.
          **kwargs: unused (the Mixer contract's extra inputs).

        Returns:
          ``y`` of ``x``'s shape, in ``dtype``.
        """
        if x.ndim == 5:
            self._check_frame(x, 2, "")
            y = super().__call__(x.reshape(x.shape[:2] + (-1,)), segment_ids=segment_ids,
                                 deterministic=deterministic, **kwargs)
            return y.reshape(x.shape)
        return super().__call__(x, segment_ids=segment_ids, deterministic=deterministic, **kwargs)

    def step(self, x_t: SeqStep, cache: dict, reset: jax.Array | None = None) -> tuple[SeqStep, dict]:
        """One frame: ``x_t`` ``(b, d)`` or ``(b, H, W, U)``; returns ``(y_t, cache)``, ``y_t`` shaped as ``x_t``.

        Args:
          x_t: the current frame.
          cache: from :meth:`init_cache` or a previous :meth:`step`.
          reset: optional ``(batch,)`` booleans: those rows restart from the empty cache.

        Returns:
          ``(y_t, cache)``.
        """
        if x_t.ndim == 4:
            self._check_frame(x_t, 1, ".step")
            y, cache = super().step(x_t.reshape(x_t.shape[0], -1), cache, reset)
            return y.reshape(x_t.shape), cache
        return super().step(x_t, cache, reset)


__all__ = ["FrameMixer", "check_odd_kernel", "conv2d"]
