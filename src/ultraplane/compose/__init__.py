"""Composition: kro's ResourceGraphDefinition API (kro.run/v1alpha1) for ultraplane clusters.

A platform package: it talks to clusters only through `ultraplane.client`. `controller.ComposeController`
is what `ultraplane compose` runs; `graph.build` compiles an RGD; `simpleschema` and `expressions` are
the schema and CEL layers it uses.
"""
