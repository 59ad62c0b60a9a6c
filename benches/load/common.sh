# Shared by the load scripts (sourced, not run): the upstream and the route they measure.

# bench_nginx <NGINX binary> <work dir> <listen address>: nginx on core 0 with one worker, a
# fixed 200 answer, `/nginx_status`, and keep-alive long enough for the proxies' pooled
# connections to last a whole run.
bench_nginx() {
  local nginx=$1 w=$2 up=$3
  mkdir -p "$w/nginx"
  cat > "$w/nginx.conf" <<NGX
worker_processes 1;
pid $w/nginx.pid;
error_log $w/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $w/nginx;
  proxy_temp_path $w/nginx; fastcgi_temp_path $w/nginx; uwsgi_temp_path $w/nginx; scgi_temp_path $w/nginx;
  keepalive_requests 100000000;
  keepalive_timeout 300s;
  server {
    listen $up;
    location = /nginx_status { stub_status; }
    location / { return 200 "ok\n"; }
  }
}
NGX
  taskset -c 0 "$nginx" -c "$w/nginx.conf" -p "$w/nginx"
}

# bench_transfer_route <issuers, TOML list items>: the route the ratios are judged on, three
# rules on claims and two forwarded headers.
bench_transfer_route() {
  cat <<ROUTE
[[route]]
name = "transfer"
path = "/api/accounts/{id}/transfer"
issuers = [$1]

  [[route.rule]]
  name = "needs-transfer-permission"
  allow_if = "'transfer' in claims.permissions"

  [[route.rule]]
  name = "account-owner"
  allow_if = "request.params.id == claims.account"

  [[route.rule]]
  name = "limit-present"
  allow_if = "has(claims.features.maxTransactionAmount) && claims.features.maxTransactionAmount > 0"

  [route.forward]
  "x-user-id" = "claims.sub"
  "x-max-amount" = "claims.features.maxTransactionAmount"

ROUTE
}
