"""Reverse-mode automatic differentiation on ``xp`` arrays.

A ``Tensor`` wraps an array (``.data``) and, when it was computed from tensors that require
gradients, remembers its parents and a ``backward`` closure. The closure takes the gradient of the
final scalar with respect to this tensor's output, dL/d(out), and returns dL/d(parent) for each
parent. ``Tensor.backward()`` walks the graph from the loss to the leaves in reverse topological
order, calling each closure once.

Each primitive op below keeps its forward and its backward side by side, micrograd-style. The
expensive layers of a transformer do not use them: ``tinyllm.functional`` has fused ops (linear,
layer_norm, attention, cross_entropy, ...) whose backward is derived by hand, so a training step
builds a graph of a few dozen nodes. The primitives are for composition: LoRA, RL losses, and your
own experiments.

Memory: once a node's backward has run, its saved arrays (captured by the closure), its link to its
parents and its gradient are dropped, so activations are freed as the backward pass moves towards
the inputs. Gradients of leaves (parameters) are accumulated: call ``zero_grad`` (or set
``.grad = None``) between steps.
"""

from __future__ import annotations

import numpy as np

from . import backend
# the graph switch (per thread), re-exported here: ``from tinyllm.autograd import no_grad``
from .grad_mode import is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401


class Tensor:
    """An array with an optional gradient and a link to the op that produced it.

    ``Tensor(data, requires_grad=False, dtype=None)``: float data is stored in the backend's default
    dtype (float32, or float64 for gradient checks) unless ``dtype`` is given; integer data (token
    ids) keeps its integer dtype.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "_grad_owned", "_op",
                 "_retain")
    __array_ufunc__ = None  # ndarray (op) Tensor defers to Tensor's reflected operators

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.xp
        if dtype is not None:
            data = xp.asarray(data, dtype=dtype)
        else:
            data = xp.asarray(data)
            if data.dtype.kind == "f" and data.dtype != backend.dtype:
                data = data.astype(backend.dtype)
        if requires_grad and data.dtype.kind != "f":
            raise ValueError(f"only float tensors can require gradients; got dtype {data.dtype}")
        self.data = data
        self.grad = None
        self.requires_grad = requires_grad
        self._parents = ()
        self._backward = None
        self._grad_owned = False
        self._op, self._retain = None, False

    @staticmethod
    def _make(data, parents, backward) -> "Tensor":
        """The result of an op: records ``parents`` and ``backward`` only when a gradient can flow.
        The op's name (for ``repr``) is the function that defined ``backward``."""
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._grad_owned, out._retain = False, False
        out.requires_grad = is_grad_enabled() and any(p.requires_grad for p in parents)
        out._parents = tuple(parents) if out.requires_grad else ()
        out._backward = backward if out.requires_grad else None
        out._op = backward.__qualname__.split(".")[0] if out.requires_grad else None
        return out

    # ------------------------------------------------------------------ basic properties
    shape = property(lambda self: self.data.shape)
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)
    is_leaf = property(lambda self: self._backward is None)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        flag = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._op}" if self._op else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{flag}{op})"

    def retain_grad(self) -> "Tensor":
        """Keep this interior tensor's gradient in ``.grad`` after ``backward()`` (which otherwise
        frees it as soon as it has been passed on), to look at dL/d(this), as in micrograd."""
        self._retain = True
        return self

    def item(self) -> float:
        return self.data.item()

    def numpy(self) -> np.ndarray:
        return backend.to_numpy(self.data)

    def detach(self) -> "Tensor":
        """The same data with no history (no copy)."""
        return Tensor(self.data, dtype=self.data.dtype)

    # ------------------------------------------------------------------ the backward pass
    def backward(self, grad=None, leaf_grads: dict | None = None) -> None:
        """Accumulate dL/d(leaf) into ``.grad`` of every leaf that requires grad,
        where L is this tensor.

        ``grad`` is dL/d(self); it may be omitted only for a single-element tensor (it is then 1).
        ``leaf_grads``: a dict that receives the leaves' gradients
        (``{id(leaf): [leaf, gradient]}``) instead of their ``.grad``, for backward passes that run
        side by side in threads (``tinyllm.parallel``).
        """
        if not self.requires_grad:
            raise RuntimeError(
                f"backward() called on a tensor of shape {self.shape} that does not require grad: "
                "no input of the computation had requires_grad=True, or it was computed under "
                "no_grad()"
            )
        grad = self._seed_grad(grad)
        self._accumulate(grad)
        for node in reversed(self._topological_order()):
            node_grad, backward, parents = node.grad, node._backward, node._parents
            # a leaf (only the root can be one here): its gradient is the result
            if backward is None:
                continue
            # Free what this node holds before its parents' work starts: its gradient (unless
            # retained), its saved arrays (inside the closure) and its links.
            node.grad = node_grad if node._retain else None
            node._backward, node._parents = None, ()
            if node_grad is None:
                continue
            parent_grads = backward(node_grad)
            del backward, node_grad
            for parent, parent_grad in zip(parents, parent_grads, strict=True):
                if parent_grad is None or not parent.requires_grad:
                    continue
                if leaf_grads is not None and parent._backward is None:
                    entry = leaf_grads.setdefault(id(parent), [parent, None])
                    entry[1] = parent_grad if entry[1] is None else entry[1] + parent_grad
                else:
                    parent._accumulate(parent_grad)

    def _seed_grad(self, grad):
        """dL/d(self) as an array of self's shape: 1 for a single-element tensor when not given."""
        xp = backend.xp
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    "backward() without a gradient needs a single-element tensor, but this one has "
                    f"shape {self.shape}; call .sum() first or pass grad= of that shape"
                )
            return xp.ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(grad) got a gradient of shape {grad.shape} for a tensor of "
                             f"shape {self.shape}")
        return grad

    def _topological_order(self) -> list:
        """The interior nodes behind this one,
        each after all of its parents. Recursively this would read
            def visit(node): [visit(p) for p in node._parents if unvisited]; order.append(node)
        here it runs on an explicit stack, so that deep graphs (thousands of ops) never hit Python's
        recursion limit."""
        order, visited, stack = [], {id(self)}, [(self, iter(self._parents))]
        while stack:
            node, parents = stack[-1]
            for p in parents:
                if p._backward is not None and id(p) not in visited:
                    visited.add(id(p))
                    stack.append((p, iter(p._parents)))
                    break
            else:
                stack.pop()
                order.append(node)
        return order

    def _accumulate(self, grad) -> None:
        # The first gradient is stored as is (it may be shared with another tensor, e.g. both inputs
        # of an add); a second one makes a private copy, after which further ones are added in
        # place.
        if self.grad is None:
            self.grad, self._grad_owned = grad, False
        elif self._grad_owned:
            self.grad += grad
        else:
            self.grad, self._grad_owned = self.grad + grad, True

    # ------------------------------------------------------------------ operators
    def __add__(self, other): return add(self, other)
    def __radd__(self, other): return add(other, self)
    def __sub__(self, other): return sub(self, other)
    def __rsub__(self, other): return sub(other, self)
    def __mul__(self, other): return mul(self, other)
    def __rmul__(self, other): return mul(other, self)
    def __truediv__(self, other): return div(self, other)
    def __rtruediv__(self, other): return div(other, self)
    def __neg__(self): return neg(self)
    def __pow__(self, exponent): return power(self, exponent)
    def __matmul__(self, other): return matmul(self, other)
    def __rmatmul__(self, other): return matmul(other, self)
    def __getitem__(self, index): return getitem(self, index)

    def sum(self, axis=None, keepdims=False): return sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return max(self, axis, keepdims)
    def reshape(self, *shape): return reshape(self,
                                              shape[0] if len(shape) == 1
                                              and isinstance(shape[0], (tuple, list)) else shape)
    def transpose(self, *axes): return transpose(self,
                                                 axes[0] if len(axes) == 1
                                                 and isinstance(axes[0],
                                                                (tuple, list)) else (axes or None))
    permute = transpose
    T = property(lambda self: transpose(self))
    def exp(self): return exp(self)
    def log(self): return log(self)
    def tanh(self): return tanh(self)
    def sigmoid(self): return sigmoid(self)
    def relu(self): return relu(self)
    def clip(self, low, high): return clip(self, low, high)


def fused_op(backward_fn, out, cache, *inputs) -> Tensor:
    """The Tensor of a fused op (``tinyllm.functional``): ``out`` and ``cache`` come from its
    ``name_forward(...)``, and ``backward_fn(dout, cache, needs)`` returns one gradient per input —
    None for an input that is None or not a Tensor, or that needs none (``needs[i]``: does input i
    require a gradient)."""
    parents = tuple(t for t in inputs if isinstance(t, Tensor))
    needs = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs)

    def backward(dout):
        grads = backward_fn(dout, cache, needs)
        return tuple(g for g, t in zip(grads, inputs, strict=True) if isinstance(t, Tensor))

    result = Tensor._make(out, parents, backward)
    if result.requires_grad:
        result._op = backward_fn.__name__.split("_backward")[0].lstrip("_")
    return result


def array_of(x):
    """The array inside a Tensor, or x itself when it is not one. (Not ``getattr(x, "data", x)``:
    a CuPy array's own ``.data`` is its memory pointer.)"""
    return x.data if isinstance(x, Tensor) else x


def tensor(data, requires_grad=False, dtype=None) -> Tensor:
    """Shorthand for ``Tensor(...)``."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype)


def _lift(x, like=None) -> Tensor:
    """A Tensor for ``x``;
    Python numbers take the dtype of ``like`` so that they never upcast it."""
    if isinstance(x, Tensor):
        return x
    dtype = None
    if like is not None and not hasattr(x, "dtype"):
        # ...but a float next to an integer tensor, or a number next to a boolean one, must not be
        # cast (truncated) to that tensor's dtype: those take NumPy's own promotion.
        if like.dtype.kind == "f" or (like.dtype.kind in "iu" and isinstance(x, int)):
            dtype = like.dtype
    return Tensor(x, dtype=dtype)


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of NumPy broadcasting.

    Broadcasting copies an input along new leading axes and along axes of length 1, so each copy's
    gradient flows back to the same element: the gradient is the sum over those axes.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


def _expand(grad, shape):
    """A writable array of ``shape`` filled by broadcasting ``grad``
    (the backward of a reduction)."""
    out = backend.xp.empty(shape, dtype=grad.dtype)
    out[...] = grad
    return out


# ---------------------------------------------------------------------- elementwise arithmetic
def add(a, b) -> Tensor:
    """out = a + b;  da = dout,  db = dout  (each summed over the axes it was broadcast along)."""
    a, b = _lift(a, b), _lift(b, a)
    def backward(g):
        return unbroadcast(g, a.shape), unbroadcast(g, b.shape)
    return Tensor._make(a.data + b.data, (a, b), backward)


def sub(a, b) -> Tensor:
    """out = a - b;  da = dout,  db = -dout."""
    a, b = _lift(a, b), _lift(b, a)
    def backward(g):
        return unbroadcast(g, a.shape), (unbroadcast(-g, b.shape) if b.requires_grad else None)
    return Tensor._make(a.data - b.data, (a, b), backward)


def mul(a, b) -> Tensor:
    """out = a * b;  da = dout * b,  db = dout * a."""
    a, b = _lift(a, b), _lift(b, a)
    def backward(g):
        return (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                unbroadcast(g * a.data, b.shape) if b.requires_grad else None)
    return Tensor._make(a.data * b.data, (a, b), backward)


def div(a, b) -> Tensor:
    """out = a / b;  da = dout / b,  db = -dout * a / b² = -dout * out / b."""
    a, b = _lift(a, b), _lift(b, a)
    out = a.data / b.data
    def backward(g):
        g_over_b = g / b.data
        return (unbroadcast(g_over_b, a.shape) if a.requires_grad else None,
                unbroadcast(-g_over_b * out, b.shape) if b.requires_grad else None)
    return Tensor._make(out, (a, b), backward)


def neg(a) -> Tensor:
    """out = -a;  da = -dout."""
    return Tensor._make(-a.data, (a,), lambda g: (-g,))


def power(a, exponent) -> Tensor:
    """out = a ** p for a constant number p;  da = dout * p * a ** (p - 1)."""
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError("Tensor ** only takes a constant number as the exponent, got "
                        f"{type(exponent).__name__}")
    if isinstance(exponent, np.generic):
        exponent = exponent.item()  # a Python number, so that a float32 base stays float32
    def backward(g):
        return (g * exponent * a.data ** (exponent - 1),)
    return Tensor._make(a.data ** exponent, (a,), backward)


# ---------------------------------------------------------------------- matrix product
def matmul(a, b) -> Tensor:
    """out = a @ b, batched over leading axes with broadcasting (as ``numpy.matmul``).

    For 2-D: out[i,j] = Σ_k a[i,k] b[k,j], so da = dout @ bᵀ and db = aᵀ @ dout. Batched operands
    use the same formulas per matrix; an operand that was broadcast over batch axes sums its
    gradient over them. A 1-D operand is treated as a row (left) or column (right) vector, as NumPy
    does.
    """
    a, b = _lift(a, b), _lift(b, a)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("matmul needs arrays of at least 1 dimension, got shapes "
                         f"{a.shape} and {b.shape}")
    a2 = a.data if a.ndim > 1 else a.data[None, :]
    b2 = b.data if b.ndim > 1 else b.data[:, None]
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(
            f"matmul shape mismatch: {a.shape} @ {b.shape} (inner dimensions {a2.shape[-1]} and "
            f"{b2.shape[-2]} differ)"
        )
    out2 = a2 @ b2
    out = out2
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]

    def backward(g):
        g2 = g.reshape(out2.shape)
        da = db = None
        if a.requires_grad:
            da = unbroadcast(g2 @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if b.requires_grad:
            db = unbroadcast(a2.swapaxes(-1, -2) @ g2, b2.shape).reshape(b.shape)
        return da, db
    return Tensor._make(out, (a, b), backward)


# ---------------------------------------------------------------------- reductions
def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(ax % ndim for ax in axes)


def sum(a, axis=None, keepdims=False) -> Tensor:  # noqa: A001 - mirrors numpy's name
    """out = Σ a over ``axis``;  da = dout copied back along the summed axes."""
    axes = _axes(axis, a.ndim)
    def backward(g):
        if not keepdims:
            g = g.reshape([1 if i in axes else n for i, n in enumerate(a.shape)])
        return (_expand(g, a.shape),)
    return Tensor._make(a.data.sum(axis=axes, keepdims=keepdims), (a,), backward)


def mean(a, axis=None, keepdims=False) -> Tensor:
    """out = Σ a / n over ``axis``;  da = dout / n copied back along the averaged axes."""
    axes = _axes(axis, a.ndim)
    count = int(np.prod([a.shape[i] for i in axes])) if axes else 1
    return sum(a, axes, keepdims) * (1.0 / count)


def max(a, axis=None, keepdims=False) -> Tensor:  # noqa: A001
    """out = max of a over ``axis``;  da = dout at the maximum (split evenly between ties), 0
    elsewhere."""
    axes = _axes(axis, a.ndim)
    out_keep = a.data.max(axis=axes, keepdims=True)
    def backward(g):
        if not keepdims:
            g = g.reshape(out_keep.shape)
        is_max = a.data == out_keep
        return (is_max * (g / is_max.sum(axis=axes, keepdims=True, dtype=g.dtype)),)
    out = out_keep if keepdims else out_keep.reshape([n
                                                      for i,
                                                      n in enumerate(a.shape) if i not in axes])
    return Tensor._make(out, (a,), backward)


# ---------------------------------------------------------------------- shape
def reshape(a, shape) -> Tensor:
    """out = a viewed with another shape;  da = dout viewed with a's shape."""
    return Tensor._make(a.data.reshape(shape), (a,), lambda g: (g.reshape(a.shape),))


def transpose(a, axes=None) -> Tensor:
    """out = a with its axes permuted (reversed by default);  da = dout with the inverse
    permutation."""
    axes = tuple(reversed(range(a.ndim))) if axes is None else tuple(ax % a.ndim for ax in axes)
    if sorted(axes) != list(range(a.ndim)):
        raise ValueError(f"transpose axes {axes} are not a permutation of the {a.ndim} axes of "
                         f"shape {a.shape}")
    inverse = tuple(np.argsort(axes))
    return Tensor._make(a.data.transpose(axes), (a,), lambda g: (g.transpose(inverse),))


def getitem(a, index) -> Tensor:
    """out = a[index] (slices, integers, integer or boolean arrays);  da = dout scattered back to
    index.

    With integer arrays an element can be picked twice, so the scatter must add (``add.at``); basic
    slicing picks each element at most once, so a plain assignment does.
    """
    xp = backend.xp
    index = tuple(i.data if isinstance(i, Tensor) else i
                  for i in index) if isinstance(index, tuple) \
        else (index.data if isinstance(index, Tensor) else index)
    parts = index if isinstance(index, tuple) else (index,)
    fancy = any(isinstance(p, (list, np.ndarray, xp.ndarray)) for p in parts)

    def backward(g):
        grad = xp.zeros(a.shape, dtype=g.dtype)
        if fancy:
            xp.add.at(grad, index, g)
        else:
            grad[index] = g
        return (grad,)
    return Tensor._make(a.data[index], (a,), backward)


def concatenate(tensors, axis=0) -> Tensor:
    """out = the tensors joined along ``axis``;  each input's gradient is its slice of dout."""
    tensors = [_lift(t) for t in tensors]
    bounds = np.cumsum([t.shape[axis] for t in tensors])[:-1].tolist()
    def backward(g):
        return tuple(backend.xp.split(g, bounds, axis=axis))
    return Tensor._make(backend.xp.concatenate([t.data for t in tensors], axis=axis), tensors,
                        backward)


def stack(tensors, axis=0) -> Tensor:
    """out = the tensors stacked along a new ``axis``;  each input's gradient is dout taken at its
    index."""
    tensors = [_lift(t) for t in tensors]
    def backward(g):
        return tuple(backend.xp.take(g, i, axis=axis) for i in range(len(tensors)))
    return Tensor._make(backend.xp.stack([t.data for t in tensors], axis=axis), tensors, backward)


# ---------------------------------------------------------------------- elementwise functions
def exp(a) -> Tensor:
    """out = eᵃ;  da = dout * out."""
    out = backend.xp.exp(a.data)
    return Tensor._make(out, (a,), lambda g: (g * out,))


def log(a) -> Tensor:
    """out = ln a;  da = dout / a."""
    return Tensor._make(backend.xp.log(a.data), (a,), lambda g: (g / a.data,))


def tanh(a) -> Tensor:
    """out = tanh a;  da = dout * (1 - out²)."""
    out = backend.xp.tanh(a.data)
    return Tensor._make(out, (a,), lambda g: (g * (1 - out * out),))


def sigmoid(a) -> Tensor:
    """out = 1 / (1 + e⁻ᵃ);  da = dout * out * (1 - out)."""
    xp = backend.xp
    # Written with exp(-|a|) so that neither branch overflows.
    e = xp.exp(-xp.abs(a.data))
    out = xp.where(a.data >= 0, 1 / (1 + e), e / (1 + e))
    return Tensor._make(out, (a,), lambda g: (g * out * (1 - out),))


def relu(a) -> Tensor:
    """out = max(a, 0);  da = dout where a > 0, else 0."""
    return Tensor._make(backend.xp.maximum(a.data, 0), (a,), lambda g: (g * (a.data > 0),))


def clip(a, low, high) -> Tensor:
    """out = a limited to [low, high];  da = dout where a is inside the range, else 0."""
    inside = (a.data >= low) & (a.data <= high)
    return Tensor._make(backend.xp.clip(a.data, low, high), (a,), lambda g: (g * inside,))


def maximum(a, b) -> Tensor:
    """out = elementwise max;  the gradient goes to the larger input (to ``a`` on ties)."""
    a, b = _lift(a, b), _lift(b, a)
    a_wins = a.data >= b.data
    def backward(g):
        return unbroadcast(g * a_wins, a.shape), unbroadcast(g * ~a_wins, b.shape)
    return Tensor._make(backend.xp.maximum(a.data, b.data), (a, b), backward)


def minimum(a, b) -> Tensor:
    """out = elementwise min;  the gradient goes to the smaller input (to ``a`` on ties)."""
    a, b = _lift(a, b), _lift(b, a)
    a_wins = a.data <= b.data
    def backward(g):
        return unbroadcast(g * a_wins, a.shape), unbroadcast(g * ~a_wins, b.shape)
    return Tensor._make(backend.xp.minimum(a.data, b.data), (a, b), backward)


def where(condition, a, b) -> Tensor:
    """out = a where condition else b;  da = dout where condition, db = dout elsewhere."""
    a, b = _lift(a, b), _lift(b, a)
    cond = condition.data if isinstance(condition, Tensor) else backend.xp.asarray(condition)
    def backward(g):
        zero = backend.xp.zeros((), dtype=g.dtype)
        return (unbroadcast(backend.xp.where(cond, g, zero), a.shape),
                unbroadcast(backend.xp.where(cond, zero, g), b.shape))
    return Tensor._make(backend.xp.where(cond, a.data, b.data), (a, b), backward)
