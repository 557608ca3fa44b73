"""Nested parameters of the transformation objects, the scikit-learn way."""

from __future__ import annotations

from sklearn.base import clone

from dti_sklearn.transforms import Transformation


class NestedTransformsParamsMixin:
    """``get_params`` / ``set_params`` that reach into the ``transforms`` list.

    scikit-learn recurses into a single object parameter but not into the
    elements of a list; this mixin lists them the way
    :class:`~sklearn.pipeline.Pipeline` lists its steps, so that
    ``GridSearchCV`` can tune ``transforms__1__kernel_size``.
    """

    def get_params(self, deep: bool = True) -> dict:
        """Get the parameters of this estimator.

        With ``deep=True`` and ``transforms`` a list or tuple, every element
        is also listed as ``transforms__<i>``, and every parameter of a
        :class:`~dti_sklearn.transforms.Transformation` object in it as
        ``transforms__<i>__<param>`` (the way :class:`~sklearn.pipeline.Pipeline`
        lists its steps), so that :meth:`set_params` and ``GridSearchCV`` can
        reach them.  A single transformation object is handled by
        scikit-learn as usual (``transforms__<param>``).

        Parameters
        ----------
        deep : bool, default=True
            Whether to include the elements of ``transforms`` and their
            parameters.

        Returns
        -------
        params : dict
            Parameter names mapped to their values.
        """
        params = super().get_params(deep=deep)
        if deep and isinstance(self.transforms, (list, tuple)):
            for index, element in enumerate(self.transforms):
                params[f"transforms__{index}"] = element
                if isinstance(element, Transformation):
                    for key, value in element.get_params(deep=True).items():
                        params[f"transforms__{index}__{key}"] = value
        return params

    def set_params(self, **params) -> NestedTransformsParamsMixin:
        """Set the parameters of this estimator.

        Besides the constructor's parameters this accepts
        ``transforms__<i>`` (replace the i-th element of ``transforms``) and
        ``transforms__<i>__<param>`` (set a parameter of the i-th
        transformation object), see :meth:`get_params`.  ``transforms`` itself
        is set first when given too.  The objects in ``transforms`` are never
        modified in place: the changed ones are cloned and a new list (or
        tuple) is stored, so objects shared with other estimators (or with the
        caller) keep their values.

        Parameters
        ----------
        **params : dict
            Estimator parameters.

        Returns
        -------
        self : estimator instance
            Estimator instance.

        Raises
        ------
        ValueError
            For an unknown parameter, an index out of range, or a nested
            parameter of an element given by name (``"mor"``): pass
            transformation objects to set their parameters.
        """
        prefix = "transforms__"
        nested = {key: value for key, value in params.items() if key.startswith(prefix)}
        super().set_params(
            **{key: value for key, value in params.items() if key not in nested}
        )
        if not nested:
            return self
        current = self.transforms
        if isinstance(current, Transformation):
            sub = {key[len(prefix):]: value for key, value in nested.items()}
            self.transforms = clone(current).set_params(**sub)
            return self
        if not isinstance(current, (list, tuple)):
            raise ValueError(
                f"Invalid parameter {next(iter(nested))!r} for estimator {self}: "
                f"transforms={current!r} has no nested parameters."
            )
        elements = list(current)
        element_params: dict[int, dict] = {}
        for key, value in nested.items():
            head, _, sub_key = key[len(prefix):].partition("__")
            if not (head.isdigit() and int(head) < len(elements)):
                raise ValueError(
                    f"Invalid parameter {key!r} for estimator {self}. transforms has "
                    f"{len(elements)} elements: use transforms__<i> or "
                    "transforms__<i>__<param> with 0 <= i < "
                    f"{len(elements)}."
                )
            if sub_key:
                element_params.setdefault(int(head), {})[sub_key] = value
            else:
                elements[int(head)] = value
        for index, sub in element_params.items():
            element = elements[index]
            if not isinstance(element, Transformation):
                raise ValueError(
                    f"Invalid parameter 'transforms__{index}__{next(iter(sub))}' for "
                    f"estimator {self}: transforms[{index}] is {element!r}, not a "
                    "Transformation object; pass objects from dti_sklearn.transforms "
                    "to set their parameters."
                )
            elements[index] = clone(element).set_params(**sub)
        self.transforms = type(current)(elements)
        return self
