#!/usr/bin/env bash
# Start preprocessing (hence training, evaluation and promotion) for one station, several, or the
# whole fleet, without touching the reconciled base (docs/KUBERNETES.md, "Fleet: many stations"):
#
#   .kubernetes/trigger.sh LesCorts                           # one station
#   .kubernetes/trigger.sh --all                              # every station the image ships
#   .kubernetes/trigger.sh LesCorts EXTRA_HASH_SALT=retrain-2 # retrain: a new config hash
#
# Each station gets its own Job, made from the suspended CronJob `preprocess` with the station in
# the Job's own env. The station cannot go through the ConfigMap `preprocess-config`: it is shared
# by every run, so runs started together would race on it, and editing it changes what
# `kubectl apply -k` reconciles. Container `env` wins over `envFrom`, so DATASET_NAME and
# IDENTIFIER set here override the ConfigMap; every other setting (sampling, salt) still comes
# from the ConfigMap unless given as KEY=VALUE. For each station this runs exactly:
#
#   kubectl -n flts create job preprocess-<station>-<epoch> --from=cronjob/preprocess --dry-run=client -o yaml \
#     | kubectl set env --local -f - DATASET_NAME=<Station> IDENTIFIER=<Station> [KEY=VALUE...] -o yaml \
#     | kubectl -n flts create -f -
set -euo pipefail

# "All" is the datasets the preprocess image ships (Dockerfile: COPY data/*.csv /app/data/): each of
# them can be processed even on an empty dataset bucket. A station added only to the bucket is
# triggered by name.
DATA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/data"
# PreprocessSettings.DATASET_NAME's pattern; checked here so a typo fails before any Job exists.
STATION_RE='^[A-Za-z0-9][A-Za-z0-9._-]*$'
# Job names become a pod label value (63 characters at most): "preprocess-" + station + "-" + 10 digits.
MAX_STATION_LEN=41

usage() {
  echo "usage: $0 STATION... [KEY=VALUE...] | $0 --all [KEY=VALUE...]" >&2
  exit 2
}

shipped_stations() {
  local test_csv
  for test_csv in "$DATA_DIR"/*_test.csv; do
    [[ -f $test_csv ]] || continue
    basename "$test_csv" _test.csv
  done
}

stations=()
settings=()
all=false
for arg in "$@"; do
  case $arg in
    --all) all=true ;;
    -h | --help) usage ;;
    *=*) settings+=("$arg") ;;
    *) stations+=("$arg") ;;
  esac
done
if $all; then
  ((${#stations[@]} == 0)) || usage
  # A read loop rather than mapfile: macOS still ships bash 3.2.
  while IFS= read -r station; do stations+=("$station"); done < <(shipped_stations)
  ((${#stations[@]} > 0)) || { echo "no <station>_test.csv in $DATA_DIR" >&2; exit 2; }
fi
((${#stations[@]} > 0)) || usage
# ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error in bash before 4.4.
for setting in ${settings[@]+"${settings[@]}"}; do
  case ${setting%%=*} in
    DATASET_NAME | IDENTIFIER)
      echo "$setting: the station is the argument, not a setting" >&2
      exit 2
      ;;
  esac
done
for station in "${stations[@]}"; do
  if [[ ! $station =~ $STATION_RE ]] || ((${#station} > MAX_STATION_LEN)); then
    echo "not a station name: '$station' (${STATION_RE}, at most $MAX_STATION_LEN characters)" >&2
    exit 2
  fi
done

epoch=$(date +%s)
failed=()
for station in "${stations[@]}"; do
  job="preprocess-$(echo "$station" | tr 'A-Z_.' 'a-z--')-$epoch"
  # One failed station must not stop the rest of the fleet; the exit status reports it.
  if ! kubectl -n flts create job "$job" --from=cronjob/preprocess --dry-run=client -o yaml |
    kubectl set env --local -f - DATASET_NAME="$station" IDENTIFIER="$station" ${settings[@]+"${settings[@]}"} -o yaml |
    kubectl -n flts create -f -; then
    failed+=("$station")
  fi
done
if ((${#failed[@]} > 0)); then
  echo "not started: ${failed[*]}" >&2
  exit 1
fi
