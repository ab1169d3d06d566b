"""The ``inception`` FID detector against pytorch-fid's own ``InceptionV3`` on the same images.

pytorch-fid's FID weights cannot be fetched here, so both networks get the same seeded random weights
for the FID Inception architecture (the architecture is pytorch-fid's ``fid_inception_v3``, built
without its download). The weights are saved as a plain state dict, the format the detector loads
with ``weights_only=True``. pytorch-fid's network is then fed what its documentation asks for: float
images in [0, 1] at any size (it resizes to 299x299 and maps to [-1, 1] itself). The detector is fed
the same images as uint8 and must give the same 2048-d pool3 features.
"""

from __future__ import annotations

import pytest
import pytorch_fid.inception as fid_inception
import torch
import torchvision

from tools.fid import get_detector
from tools.fid.detectors import INCEPTION_WEIGHTS_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


def _random_state_dict(skeleton: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights that keep activations O(1) through the network: He-scaled convolutions and
    linear layers, batch-norm statistics and affine terms near the identity."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in skeleton.state_dict().items():
        if not value.is_floating_point():
            state[key] = value.clone()  # num_batches_tracked
        elif value.ndim >= 2:  # conv / linear weights
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=gen) * (2.0 / fan_in) ** 0.5
        elif key.endswith(("running_var", "weight")):
            state[key] = 0.5 + torch.rand(value.shape, generator=gen)
        else:  # running_mean, bias
            state[key] = 0.1 * torch.randn(value.shape, generator=gen)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded random state dict for pytorch-fid's FID Inception, saved where the detector can read it."""
    with pytest.MonkeyPatch.context() as patch:
        # fid_inception_v3 builds the FID variant, then downloads and loads the weights: skip both.
        patch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: {})
        patch.setattr(torchvision.models.inception.Inception3, "load_state_dict", lambda self, sd, **k: None)
        skeleton = fid_inception.fid_inception_v3()
    state = _random_state_dict(skeleton, seed=0)
    path = tmp_path_factory.mktemp("inception-parity") / INCEPTION_WEIGHTS_FILE
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def reference(weights):
    """pytorch-fid's InceptionV3 exactly as its FID code builds it, loading the state dict strictly."""
    _, state = weights
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fid_inception, "load_state_dict_from_url", lambda *a, **k: state)
        model = fid_inception.InceptionV3([fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
                                          resize_input=True, normalize_input=True, use_fid_inception=True)
    return model.eval()


def _images(channels: int, count: int = 2, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(channels)
    return torch.randint(0, 256, (count, channels, size, size), generator=gen, dtype=torch.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_detector_features_equal_pytorch_fid(weights, reference, channels):
    path, _ = weights
    detector = get_detector("inception", weights=path)
    images = _images(channels)
    ours = detector(images)

    pixels = images.to(torch.float32) / 255.0  # pytorch-fid's documented input: [0, 1]
    if channels == 1:
        pixels = pixels.repeat(1, 3, 1, 1)  # pytorch-fid's ImagePathDataset converts to RGB
    with torch.no_grad():
        expected = reference(pixels)[0].squeeze(-1).squeeze(-1)

    assert ours.shape == expected.shape == (len(images), 2048)
    assert expected.std() > 1e-2  # the random network gives features that are not degenerate
    # The same float32 operations on the same inputs: equal up to float32 round-off.
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], rtol=1e-2)  # different images, different features
