"""GitOps: Argo CD's Application, AppProject and ApplicationSet (argoproj.io/v1alpha1) on ultraplane clusters.

Modules: crds (Argo's CRDs shipped as data), git (the git CLI), render (directory, kustomize, secret
placeholders), health, diff, sync (waves, phases, hooks, prune), controller (Applications, projects, clusters),
appset (ApplicationSet generators).
"""
