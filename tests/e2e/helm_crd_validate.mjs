// Validates custom resources against their CRD models: reads a JSON array of manifests on stdin,
// prints one JSON line per manifest ({kind, name, ok, error}) and exits 1 if any is invalid or of
// a kind it has no model for. Used by test_helm.py for what kubernetes-validate has no schema for.
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;
let failed = false;
for (const doc of JSON.parse(input)) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const Model = models[key];
  const out = { kind: doc.kind, name: doc.metadata?.name, ok: false };
  if (!Model) {
    out.error = `no model for ${key}`;
  } else {
    try {
      new Model(doc).validate();
      out.ok = true;
    } catch (e) {
      out.error = String(e.message ?? e);
    }
  }
  failed ||= !out.ok;
  console.log(JSON.stringify(out));
}
process.exit(failed ? 1 : 0);
