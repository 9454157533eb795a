# One image for every Tips mesh service; docker-compose.yml and deploy/k8s pick the command.
#
# Stage 1 builds the product's wheel from the source (the context is the source as
# git sees it: .dockerignore); pyproject.toml alone says what the wheel holds.
# The image installs only that wheel, with its declared dependencies, as
# tests/e2e/test_installed_wheel.py does into a clean venv before it starts every
# service and the gateway from it. No source tree, build tools or pip cache stay
# in the image (size and how it is measured: docs/operations.md, "The image").
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/tips_mesh-*.whl
WORKDIR /app
# The model repository compose and Kubernetes seed their volume from
# (TIPS_*_MODEL_REPOSITORY=/app/models); the installed package carries none.
COPY models ./models
ENV TIPS_HOST=0.0.0.0 TIPS_LOG_FORMAT=json
# nobody:nogroup, numerically (Kubernetes' runAsNonRoot can verify it; compose and the
# manifests hand the volumes to 65534).
USER 65534:65534
ENTRYPOINT ["tips"]
