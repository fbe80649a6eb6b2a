# syntax=docker/dockerfile:1
# Multi-stage build: a static binary (CGO_ENABLED=0) on a minimal, non-root image.

FROM golang:1.26-alpine AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/imageapi . \
 && mkdir -p /out/data/uploads

# distroless/static: no shell, no package manager; "nonroot" is uid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/imageapi /imageapi
# A named volume mounted here starts with this directory's owner, so the non-root user can write it.
COPY --from=build --chown=65532:65532 /out/data /data
ENV ADDR=:8000 UPLOAD_DIR=/data/uploads
WORKDIR /data
USER 65532:65532
EXPOSE 8000
# The binary probes its own /readyz: the image needs no curl or shell.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["/imageapi", "-healthcheck"]
ENTRYPOINT ["/imageapi"]
CMD ["-mode=all"]
