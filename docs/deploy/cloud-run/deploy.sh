#!/usr/bin/env bash
# Build, migrate, deploy, sync crons, and create the Cloud Scheduler ping.
# Run from your project root (this Dockerfile, wsgi.py, requirements.txt and
# migrations/ beside your package). Needs: gcloud, a project with Cloud Run,
# Cloud Build, Artifact Registry, Secret Manager and Cloud Scheduler enabled, and
# three secrets created once:
#   printf %s "$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')" \
#     | gcloud secrets create flask-app-secret-key --data-file=-
#   (same for flask-app-produce-token; flask-app-database-url holds the URL)
set -euo pipefail

PROJECT="${PROJECT:?set PROJECT}"
REGION="${REGION:-europe-west1}"
SERVICE="${SERVICE:-flask-app}"
IMAGE="$REGION-docker.pkg.dev/$PROJECT/${REPOSITORY:-apps}/$SERVICE:$(date +%Y%m%d%H%M%S)"
SECRETS="SECRET_KEY=flask-app-secret-key:latest,DATABASE_URL=flask-app-database-url:latest,QUEUE_PRODUCE_TOKEN=flask-app-produce-token:latest"

gcloud builds submit --project "$PROJECT" --tag "$IMAGE" .

# The service URL is known once the service exists; a first deploy creates it.
URL="$(gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --format 'value(status.url)' 2>/dev/null || true)"
# Until then (first deploy only) deliveries fail to connect and wait for the next produce.
URL="${QUEUE_BASE_URL:-${URL:-https://pending.invalid}}"
ENV="QUEUE_BASE_URL=$URL"

run_job() {  # run_job NAME ARGS: a one-off `flask --app wsgi ARGS` on the new image
  gcloud run jobs deploy "$SERVICE-$1" --project "$PROJECT" --region "$REGION" \
    --image "$IMAGE" --set-secrets "$SECRETS" --set-env-vars "$ENV" \
    --command flask --args="$2" --max-retries 0 --execute-now --wait
}

# 1. Schema first: the old release keeps serving on the migrated tables.
run_job migrate "--app,wsgi,db,upgrade"

# 2. The new release. --timeout bounds a handler (one invoke request): up to 60 min.
# --concurrency matches gunicorn's 8 threads (Dockerfile). Public ingress: the http
# executor's own POSTs to /_queue/invoke carry a signature, not a Google ID token.
gcloud run deploy "$SERVICE" --project "$PROJECT" --region "$REGION" --image "$IMAGE" \
  --allow-unauthenticated --timeout 900 --concurrency 8 \
  --set-secrets "$SECRETS" --set-env-vars "$ENV"
NEW_URL="$(gcloud run services describe "$SERVICE" --project "$PROJECT" --region "$REGION" \
  --format 'value(status.url)')"
if [ -z "${QUEUE_BASE_URL:-}" ] && [ "$NEW_URL" != "$URL" ]; then
  URL="$NEW_URL"
  ENV="QUEUE_BASE_URL=$URL"
  gcloud run services update "$SERVICE" --project "$PROJECT" --region "$REGION" \
    --update-env-vars "$ENV"
fi

# 3. Once the new release is live: drop the crons (and limits) it no longer declares.
run_job sync-crons "--app,wsgi,queue,sync-crons"

# 4. The producer ping, every minute, with the produce bearer token.
TOKEN="$(gcloud secrets versions access latest --project "$PROJECT" --secret flask-app-produce-token)"
SCHEDULE=(--project "$PROJECT" --location "$REGION" --schedule "* * * * *"
  --uri "$URL/_queue/produce" --http-method GET --attempt-deadline 60s
  --headers "Authorization=Bearer $TOKEN")
# Created once; to change the URL or the token, delete the job and run this again.
gcloud scheduler jobs describe "$SERVICE-produce" --project "$PROJECT" --location "$REGION" \
  >/dev/null 2>&1 || gcloud scheduler jobs create http "$SERVICE-produce" "${SCHEDULE[@]}"
