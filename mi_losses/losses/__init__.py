"""Loss modules: configuration as plain values, math in :mod:`mi_losses.functional`."""

from mi_losses.losses.adversarial import (
    AdversarialPrivacy,
    AdversaryBatch,
    AdversarySettings,
    adversarial_privacy_loss,
)
from mi_losses.losses.base import ComponentLossModule, MixtureLossModule, MutualInformationLoss
from mi_losses.losses.distance import MahalanobisDistance
from mi_losses.losses.distillation import (
    HiddenStateDistillation,
    LogitDistillation,
    RetrievalDistillation,
)
from mi_losses.losses.mixture_entropy import GaussianMixtureEntropy
from mi_losses.losses.mutual_information import SubBatchMutualInformation
from mi_losses.losses.prototypes import kmeans_prototypes, nearest_prototype, prototype_pull_loss
from mi_losses.losses.substitution import SubstitutionMutualInformation
from mi_losses.losses.vocabulary import VocabularyMutualInformation

__all__ = [
    "AdversarialPrivacy",
    "AdversaryBatch",
    "AdversarySettings",
    "ComponentLossModule",
    "GaussianMixtureEntropy",
    "HiddenStateDistillation",
    "LogitDistillation",
    "MahalanobisDistance",
    "MixtureLossModule",
    "MutualInformationLoss",
    "RetrievalDistillation",
    "SubBatchMutualInformation",
    "SubstitutionMutualInformation",
    "VocabularyMutualInformation",
    "adversarial_privacy_loss",
    "kmeans_prototypes",
    "nearest_prototype",
    "prototype_pull_loss",
]
