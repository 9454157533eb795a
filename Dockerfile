# One image for every Tips mesh service; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gen ./gen
# tipsclient: the TLS part kernel.tls shares with the typed client (clients/python).
COPY clients/python/tipsclient ./clients/python/tipsclient
COPY kernel ./kernel
COPY policy ./policy
COPY services ./services
COPY gateway ./gateway
COPY tipsmesh ./tipsmesh
COPY models ./models
RUN pip install --no-cache-dir .
ENV TIPS_HOST=0.0.0.0 TIPS_LOG_FORMAT=json
USER nobody
ENTRYPOINT ["tips"]
