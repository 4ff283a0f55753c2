"""The networks of an ANI ensemble, evaluated together.

torchani's ``Ensemble`` runs its K members one after the other, and each member
runs one small network per element over the atoms of that element: 32 separate
multilayer perceptrons for ANI-1x (8 members, H C N O), each a chain of small
matrix products. Every conformer here has the same atoms, so the atoms of one
element sit at a fixed list of indices, and the K members' layers of one element
have the same shapes. :class:`BatchEnsemble` stacks them: per element, the first
layer of all K members is one (M, D) x (D, K H) product and every later layer one
batched (K, M, H) x (K, H, H') product, M = W times the atoms of that element.
Same numbers as the torchani modules (to float rounding), a few times fewer
kernel launches, and larger products.
"""
from __future__ import annotations

import torch


class BatchEnsemble:
    """Mean energy (W,) in Hartree, self energies excluded, of a torchani Ensemble.

    ``ensemble``: a torchani.nn.Ensemble of ANIModel members whose per-element
    networks alternate Linear and CELU layers (as ANI-1x and ANI-1ccx do);
    ``species``: the element names in the order of the model's species indices.
    """

    def __init__(self, ensemble, species):
        members = list(ensemble)
        self.size = len(members)
        self.layers = []          # per species index, one (weight, bias) per Linear layer
        alphas = set()
        for name in species:
            nets = [member[name] for member in members]
            stacked = []
            for index, layer in enumerate(nets[0]):
                if isinstance(layer, torch.nn.Linear):
                    weight = torch.stack([net[index].weight.detach().T for net in nets])
                    bias = torch.stack([net[index].bias.detach() for net in nets])[:, None]
                    stacked.append((weight, bias))                  # (K, in, out), (K, 1, out)
                elif isinstance(layer, torch.nn.CELU):
                    alphas.add(layer.alpha)
                else:
                    raise ValueError(f"BatchEnsemble supports Linear and CELU layers, "
                                     f"not {type(layer).__name__}")
            if stacked[-1][0].shape[-1] != 1:
                raise ValueError("each element's network must end in a Linear layer of width 1")
            first_weight, first_bias = stacked[0]
            K, D, H = first_weight.shape
            # the first layer of all K members as one (D, K H) matrix and a (K H,) bias
            stacked[0] = (first_weight.permute(1, 0, 2).reshape(D, K * H), first_bias.reshape(K * H))
            self.layers.append(stacked)
        if len(alphas) != 1:
            raise ValueError("BatchEnsemble needs one CELU alpha for every layer")
        self.alpha = alphas.pop()

    def __call__(self, species: torch.Tensor, aev: torch.Tensor) -> torch.Tensor:
        """species (N,) long, aev (W, N, D) -> energies (W,)."""
        W, K = aev.shape[0], self.size
        total = aev.new_zeros(W)
        for s in torch.unique(species).tolist():
            atoms = (species == s).nonzero(as_tuple=True)[0]
            first, *rest = self.layers[s]
            h = aev[:, atoms].reshape(-1, aev.shape[-1])                        # (M, D)
            h = torch.addmm(first[1], h, first[0])                              # (M, K H)
            h = torch.nn.functional.celu(h, self.alpha)
            h = h.reshape(h.shape[0], K, -1).transpose(0, 1)                    # (K, M, H)
            for index, (weight, bias) in enumerate(rest):
                h = torch.baddbmm(bias, h, weight)
                if index < len(rest) - 1:
                    h = torch.nn.functional.celu(h, self.alpha)
            total = total + h.reshape(K, W, -1).sum(dim=(0, 2))
        return total / K
