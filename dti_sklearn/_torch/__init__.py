"""The torch core: encoder, batched heads and the prototype network.

Nothing here imports scikit-learn; the estimators drive these modules.
"""
