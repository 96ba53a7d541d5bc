#!/usr/bin/env bash
# Renders the chart with its defaults into charts/weft/rendered/install.yaml, the manifests
# `weft install` prints. Certificates are not in it: `weft install` generates them on every run
# and puts their CA bundle where the placeholder stands. A test (e2e/tests/chart_render.rs)
# fails when this file drifts from the chart.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-charts/weft/rendered/install.yaml}
{
  echo "# Rendered from charts/weft with its default values by e2e/scripts/render-install.sh."
  echo "# Do not edit: change the chart and re-run the script. \`weft install\` fills in the"
  echo "# certificates (WEFT_CA_BUNDLE_PLACEHOLDER) and prepends the namespace and Secrets."
  python3 e2e/scripts/helm.py template --namespace weft-system --name weft \
    --set webhook.existingSecret=weft-webhook-tls \
    --set webhook.caBundle=WEFT_CA_BUNDLE_PLACEHOLDER \
    --set identity.existingSecret=weft-identity
} > "$out.tmp"
mv "$out.tmp" "$out"
