import pytest
import torch

from deepinit.network.activations import ACTIVATIONS
from deepinit.network.model import MLP


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_shapes_and_layer_order(activation):
    model = MLP(depth=50, width=64, activation=activation)
    assert model.depth == 50 and len(model.activations) == 49
    shapes = [tuple(layer.weight.shape) for layer, _ in model.layers()]
    assert shapes[0] == (64, 784) and shapes[-1] == (10, 64) and set(shapes[1:-1]) == {(64, 64)}
    assert [act is None for _, act in model.layers()] == [False] * 49 + [True]
    x = torch.randn(7, 1, 28, 28)
    out = model(x)
    assert out.shape == (7, 10)
    outputs = list(model.layer_outputs(x))
    assert len(outputs) == 50 and torch.equal(outputs[-1], out)


def test_depth_two_and_no_bias():
    model = MLP(depth=2, width=5, bias=False)
    assert [tuple(m.weight.shape) for m in model.linears] == [(5, 784), (10, 5)]
    assert all(m.bias is None for m in model.linears)


def test_first_nonfinite_layer():
    model = MLP(depth=6, width=8, activation="linear")
    x = torch.randn(3, 784)
    assert model.first_nonfinite_layer(x) is None
    with torch.no_grad():
        model.linears[3].weight.fill_(float("inf"))
    assert model.first_nonfinite_layer(x) == 4


@pytest.mark.parametrize(
    "kwargs, message", [({"depth": 1}, "depth"), ({"width": 0}, "width"), ({"activation": "swish"}, "choose one of")]
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**{"depth": 3, "width": 4, **kwargs})
