"""Built-in traffic switches (the ``cellvault_switch_traffic`` hook).

* :mod:`~cellvault.traffic.command`: ``DR_SWITCH_COMMAND``, a command run with
  the new site's id (the manual's DNS / SLB scripts);
* :mod:`~cellvault.traffic.k8s`: ``DR_SWITCH_K8S``, a Kubernetes Service or
  Ingress patched through the official ``kubernetes`` client (``cellvault[k8s]``).
"""
