"""One differentiable call over a pair of Triton launchers (forward, backward), with two ways in: a torch custom op
when torch.compile traces it (opaque to the compiler, with fake kernels for shapes), and a plain autograd.Function
in eager mode.  A custom op's Python dispatch costs far more host time than the kernels' launches: on our 2-core CPU
machine about 60 us a forward and 200 us a forward + backward, against 10 and 80 us for an autograd.Function, and
eager training of small models is bound by that host time."""
import torch


def kernel_op(name, forward, backward, forward_fake, backward_fake, setup_context, input_grads):
    """-> apply(*inputs), differentiable.  forward(*inputs) and backward(...) launch the kernels (annotated for
    torch.library; they become the ops `{name}_fwd` and `{name}_bwd`); the fakes give their outputs' shapes;
    setup_context(ctx, inputs, output) saves what input_grads(ctx, grad, backward) needs to return the inputs'
    gradients through the backward it is given."""
    forward_op = torch.library.custom_op(f'{name}_fwd', forward, mutates_args=())
    backward_op = torch.library.custom_op(f'{name}_bwd', backward, mutates_args=())
    forward_op.register_fake(forward_fake)
    backward_op.register_fake(backward_fake)
    forward_op.register_autograd(lambda ctx, grad: input_grads(ctx, grad, backward_op), setup_context=setup_context)

    def eager_forward(ctx, *inputs):
        output = forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def eager_backward(ctx, grad):
        with torch.no_grad():
            grads = input_grads(ctx, grad, backward)
        if torch.is_grad_enabled() and (grad.requires_grad or any(x.requires_grad for x in ctx.saved_tensors)):
            # create_graph: the gradients depend on tensors that require grad, through kernels that autograd cannot
            # see; each becomes a leaf of a node that raises when differentiated, rather than leaving that out
            grads = tuple(x if x is None else _FirstOrderOnly.apply(x.detach().requires_grad_(), name) for x in grads)
        return grads

    # named after the op, so that profiles show 'chunk' and 'chunkBackward'
    eager = type(name.split('::')[-1], (torch.autograd.Function,), dict(
        forward=staticmethod(eager_forward), backward=staticmethod(eager_backward)))

    def apply(*inputs):
        return forward_op(*inputs) if torch.compiler.is_compiling() else eager.apply(*inputs)

    return apply


class _FirstOrderOnly(torch.autograd.Function):
    """The identity on a gradient that a kernel computed; differentiating it raises (the kernels' backward has no
    derivative of its own: second-order gradients need the PyTorch path)."""

    @staticmethod
    def forward(ctx, grad, name):
        ctx.name = name
        return grad.view_as(grad)

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(f"{ctx.name}: the Triton kernels' backward is not differentiable, so a second-order "
                           "gradient (create_graph=True, then backward through the gradient) cannot be computed "
                           "through it; run the op with backend='torch' for that")
